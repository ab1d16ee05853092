"""What the service runs on (`lifecycle.Engine`): the model, the built corpus kept current
(`reload`), micro-batched questions (`batching`) and writes on their own thread with their
states (`writes`)."""
