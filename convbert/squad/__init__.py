"""SQuAD v1.1 / v2.0 fine-tuning: data and featurisation, n-best decoding, the official metrics, the driver."""
