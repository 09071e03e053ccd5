"""Original TF1 checkpoints of yitu-opensource/ConvBert and google-research/electra (generator, discriminator, Adam
slots, step) to Hugging Face directories and a pretraining checkpoint: `python -m convbert.tf1`
(docs/checkpoints.md#tf1-checkpoints). Reading needs TensorFlow (`pip install convbert-jax[tf1]`)."""
