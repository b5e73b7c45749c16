"""Training: the trainer and its state, the device feed, one training job, KB building,
scoring with a saved model, metrics (the continual protocol is ``fined.protocol``)."""
