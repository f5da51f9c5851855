"""Heuristic scheduler baselines, one module per scheduler, and the CP-SAT optimal bound. Each
module registers its schedulers when imported; ``llmsched_env.scheduler.BUILTIN`` names the
module of each, so ``make_scheduler("sarathi")`` imports only ``baselines.sarathi`` (and never
OR-Tools, which only ``baselines.optimal`` needs)."""
