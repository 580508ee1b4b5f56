"""The grid tool: grids of train.py runs described in YAML, run resumably on local workers or Slurm.

``cfl-grid`` / ``python -m cfl_timm.grid`` (:mod:`cfl_timm.grid.cli`). Layers, bottom up: :mod:`.runner` (cells,
locks, done markers, retries), :mod:`.grid_file` (grid files and the study protocols in ``protocols/``),
:mod:`.executors` (local worker processes, one Slurm job per cell), :mod:`.aggregate` (tables and figures),
:mod:`.cells` (a train.py cell and its scoring). Nothing in the rest of ``cfl_timm`` imports this package, and this
package never imports train.py: it runs it as a command.
"""
