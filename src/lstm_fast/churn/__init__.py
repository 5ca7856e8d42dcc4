"""Customer churn from monthly histories with lstm_fast (``lstm-fast churn``).

Modules: ``data`` (synthetic generator, CSV format and validation), ``model``
(LSTM + logistic head, BCE, Adam), ``train`` (split, training loop with early
stopping, evaluation beside the order-blind baseline), ``metrics`` (ROC AUC,
logistic regression in NumPy), ``figures`` (gate activations per month),
``cli`` (``main(argv)``).
"""
