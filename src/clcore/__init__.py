"""clcore: continual learning and task arithmetic on Lightning + Hydra.

Task ids are 0-based inside the code and 1-based in everything a user reads
(file headers, logged metric names, plots), matching the papers.
"""

__version__ = "0.1.0"
