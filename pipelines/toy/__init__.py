"""The toy model behind the `tiny` preset: a small LCM trained in this repository (`python -m pipelines.toy.train`)."""
