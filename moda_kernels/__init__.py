"""Attention kernels of moda-lab. Each op folder holds a reference, Triton kernels and an autograd wrapper;
dispatch.py decides which path each MoDA call runs."""
