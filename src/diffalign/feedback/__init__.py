"""AI-feedback dataset jobs: preference pairs built from a model's own samples (`build_pairs`), and a
pair table re-scored, and optionally relabelled, by registered scorers (`relabel_dataset`).

These jobs generate (`sampling`) and score (`rewards`, through `evaluation.scoring`'s scorer choices
and image inputs), and write Pick-a-Pic-schema tables with the helpers of `data`; so they sit beside
`training` and `evaluation`, above the packages they use.
"""
