"""lstm_fast: a fast, complete LSTM for Python on the CPU."""
__version__ = "0.1.0"
