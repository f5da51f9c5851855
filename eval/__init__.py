"""Evaluation: schedulers (learned policies, heuristics, the CP-SAT bound) on identical workloads.

``python eval/evaluate.py`` is the entry point; ``suite`` defines workloads as data
(``eval/suites/*.yaml``), ``runner`` runs them in worker processes, ``stats`` holds the
confidence intervals and goodput, ``report`` and ``plots`` write the results.
"""
