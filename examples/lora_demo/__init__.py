"""Federated LoRA demo: the machine-learning half (models, data, local training)."""
