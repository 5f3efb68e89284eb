"""Two CPU processes train with DDP over gloo on localhost; both train and stay in sync."""
import json
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pydet.data import SyntheticShapes
from pydet.engine import train

from .tiny_detector import TinyDetector

TIMEOUT_S = 120


class Recording(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset, self.seen = dataset, []

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.seen.append(index)
        return self.dataset[index]


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=__import__("datetime").timedelta(seconds=TIMEOUT_S))
    try:
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        model = TinyDetector(num_classes=3)
        data = Recording(SyntheticShapes(16, 64, seed=0))
        result = train(model, data, epochs=2, batch_size=2, optimizer="sgd", lr=0.02, warmup_steps=2,
                       progress=False, device="cpu", checkpoint=f"{out_dir}/ddp.safetensors", ema=True)
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        ema = torch.cat([p.detach().flatten() for p in result.ema.parameters()])
        torch.save({"params": params, "ema": ema}, f"{out_dir}/rank{rank}.pt")
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump({"seen": data.seen, "losses": result.losses, "steps": result.steps}, f)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_train_in_sync(tmp_path):
    context = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=1):
            assert time.monotonic() < deadline, "DDP training did not finish in time"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # each rank did all 2 x 16 / (2 x 2) = 8 steps on its own half of every epoch
    assert ranks[0]["steps"] == ranks[1]["steps"] == 8 and all(len(r["losses"]) == 8 for r in ranks)
    for epoch in range(2):
        a, b = (set(r["seen"][epoch * 8:(epoch + 1) * 8]) for r in ranks)
        assert not a & b and len(a | b) == 16
    assert ranks[0]["losses"] != ranks[1]["losses"]
    assert torch.equal(weights[0]["params"], weights[1]["params"])
    assert torch.equal(weights[0]["ema"], weights[1]["ema"])
    assert (tmp_path / "ddp.safetensors").exists()
