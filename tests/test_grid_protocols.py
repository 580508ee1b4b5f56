"""The study protocols as grid files (cfl_timm/grid/protocols/*.yaml) run exactly the train.py runs the former Python
definitions ran, and score them the same way.

The expected values were frozen from the Python protocols (bench/reproduce_protocols.py) before they were replaced:
the number of cells and the SHA-256 of the lines ``<cell>: <train.py flags after --data-dir>`` in cell order.
"""
import hashlib
import shlex

import pytest

from cfl_timm.data import long_tailed_counts, shot_group_classes
from cfl_timm.grid.grid_file import load_protocol, protocol_names

FROZEN_COMMANDS = {
    'cpu': (54, '8bca20ef883de63ee077f3f19950e45e585a1fa33604f617e2c9e6399d948986'),
    'study-cpu': (72, 'ffeb3aa679f846442ee297862f19ce138078acb2acb131f4f4903f328f4846fb'),
    'study-gpu': (72, '68b545259bc3d18b74805fb8fe5839549e319285fc85f08495741b99072a93c6'),
    'study-gpu-c100': (45, '3d786f1cd2f70a1479b6309786a1686beacb23c1f06b05697e723c72a19bcca9'),
    'smoke': (2, 'b9c3a8560719c9361a2a268190a5870793146e2f3ece70f5ba885e1f4d3d46ad'),
}
RANK = {'many': (0, 1, 2), 'medium': (3, 4, 5, 6), 'few': (7, 8, 9)}
STUDY = {'score_split': 'validation', 'temperature_scaling': True, 'baselines': ('ce', 'ce_ls0.1'),
         'pairs': (('ce_cyc_wd', 'ce_const_wd'), ('ce_cyc_temp', 'ce_const_temp'), ('ce_cyc_clip', 'ce_const_clip')),
         'focus': ('cfl_authors', 'cfl_oltr'), 'seeds': (0, 1, 2), 'threads': None}
FROZEN_SCORING = {
    'cpu': {'shot_groups': {'c10lt10': RANK, 'c10lt100': RANK}, 'score_split': None, 'temperature_scaling': False,
            'baselines': ('ce', 'ce_ls0.1'), 'pairs': (), 'focus': (), 'seeds': (0, 1, 2), 'threads': 1,
            'epochs': {'c10': 3, 'c10lt10': 4, 'c10lt100': 7}},
    'study-cpu': {**STUDY, 'threads': 1, 'epochs': {'c10_4k': 40, 'c10lt100': 60},
                  'shot_groups': {'c10lt100': {'many': (0, 1, 2), 'medium': (3, 4, 5), 'few': (6, 7, 8, 9)}}},
    'study-gpu': {**STUDY, 'epochs': {'c10': 200, 'c10lt100': 200},
                  'shot_groups': {'c10lt100': {'many': (0, 1, 2, 3, 4, 5, 6, 7), 'medium': (8, 9), 'few': ()}}},
    'study-gpu-c100': {**STUDY, 'epochs': {'c100': 200}, 'shot_groups': {}},
    'smoke': {'shot_groups': {}, 'score_split': None, 'temperature_scaling': False, 'baselines': ('ce',),
              'pairs': (), 'focus': (), 'seeds': (0,), 'threads': 1, 'epochs': {'tiny': 1}},
}


def test_the_packaged_protocols_are_the_study_protocols():
    assert set(protocol_names()) == set(FROZEN_COMMANDS)


@pytest.mark.parametrize('name', sorted(FROZEN_COMMANDS))
def test_each_protocol_runs_the_train_py_commands_it_ran_before(name):
    protocol = load_protocol(name)
    lines = [f'{cell.name}: {shlex.join(protocol.train_flags(cell))}' for cell in protocol.cells()]
    assert (len(lines), hashlib.sha256('\n'.join(lines).encode()).hexdigest()) == FROZEN_COMMANDS[name]


@pytest.mark.parametrize('name', sorted(FROZEN_SCORING))
def test_each_protocol_scores_and_compares_as_before(name):
    protocol = load_protocol(name)
    assert {key: getattr(protocol, key) for key in FROZEN_SCORING[name]} == FROZEN_SCORING[name]


def test_study_shot_groups_come_from_the_long_tailed_counts_of_the_data_flags():
    """The grid file names only the class count; the counts are cfl_timm's (train.py's) of the setting's flags."""
    protocol = load_protocol('study-cpu')
    flags = protocol.data['c10lt100']
    n_max = int(flags[flags.index('--imbalance_max') + 1])
    ratio = float(flags[flags.index('--imbalance_ratio') + 1])
    counts = long_tailed_counts(n_max, 10, ratio)
    assert counts.tolist() == [400, 239, 143, 86, 51, 30, 18, 11, 6, 4]  # 988 images
    assert protocol.shot_groups['c10lt100'] == shot_group_classes(counts, rule='paper')
