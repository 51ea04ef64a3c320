"""Runnable examples for FedSeal."""
