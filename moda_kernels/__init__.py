"""Attention kernels of moda-lab. Each op folder holds a reference, Triton kernels and an autograd wrapper."""
