"""Building blocks shared by pydet's models."""
