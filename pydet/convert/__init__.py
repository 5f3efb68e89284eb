"""Weight conversion from other implementations' state dicts into pydet's layouts."""
