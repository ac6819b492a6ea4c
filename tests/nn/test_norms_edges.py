"""Edges of the norm switchboard: the unknown-kind message, widths at and below zero for the paper's alpha table.

Written against the mutants `make mutation` found surviving in ``nn/norms.py``.
"""

from __future__ import annotations

import pytest

from dyt_deploy.errors import UnknownNameError
from dyt_deploy.nn import create_norm, norm_kinds, paper_alpha_init


def test_unknown_kind_message_says_what_was_asked_for() -> None:
    with pytest.raises(UnknownNameError) as info:
        create_norm("GroupNorm", 8)
    assert str(info.value) == f"unknown norm kind 'GroupNorm'; known: {', '.join(norm_kinds())}"


@pytest.mark.parametrize("width", [0, -4])
def test_degenerate_widths_take_the_smallest_row(width: int) -> None:
    assert paper_alpha_init(width) == paper_alpha_init(1024)
