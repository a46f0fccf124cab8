"""Whether another round is worth it and which labels to doubt: pure functions over predictions.

- ``stopping``: agreement of successive models on a stop set (Cohen's kappa), the stop set's mean
  uncertainty, Wilson intervals of accuracy, and the rules that say when to stop;
- ``calibration``: expected calibration error, reliability bins, temperature scaling;
- ``label_errors``: confident learning over out-of-sample probabilities;
- ``duplicates``: exact and near duplicates by cosine similarity of features, a chunk at a time.
"""
