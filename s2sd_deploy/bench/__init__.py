"""Benchmarks: retrieval cost, encoder cost, what S2SD adds to training, and the ablation."""
