"""Tensor parallelism over torch.distributed: how a model splits over ranks (`sharding`), the
group's collectives (`group`), and the rank processes rank 0 starts and watches (`workers`)."""
