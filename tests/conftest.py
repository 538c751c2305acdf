"""Shared test setup: small thread counts so the suite runs on 2 cores."""

import torch

torch.set_num_threads(1)
