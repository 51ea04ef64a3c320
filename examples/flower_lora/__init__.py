"""A Flower LoRA job whose updates go through FedSeal (see README.md)."""
