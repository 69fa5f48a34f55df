"""Fixtures shared by the model tests."""

import pytest

import mmcluster.models.layers.row_bands as row_bands


@pytest.fixture
def small_bands(monkeypatch):
    """Bands of a few rows at test sizes (at full size a band holds 2**21 hidden values)."""

    def use(elements):
        monkeypatch.setattr(row_bands, 'BAND_ELEMENTS', elements)

    return use
