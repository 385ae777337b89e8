"""Tables, figures and lesson verdicts from the results store (files only; never imports experiments/ or pruning/).

``python -m analysis.report`` builds everything; see analysis/README.md for each module.
"""
