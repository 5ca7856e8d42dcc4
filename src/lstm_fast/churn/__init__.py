"""Customer churn from monthly histories with lstm_fast (``lstm-fast churn``).

Modules: ``data`` (synthetic generator; CSV/Parquet tables read with pyarrow and
validated with pandas), ``model`` (LSTM + logistic head, BCE), ``train`` (split,
training loop with ``lstm_fast.optim.Adam``, early stopping and a tqdm bar,
evaluation beside the order-blind baseline), ``metrics`` (scikit-learn's metrics
and logistic-regression baseline), ``figures`` (the result figure), ``cli``
(``main(argv)``). Needs the ``churn`` extra.
"""
