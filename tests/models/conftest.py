"""Fixtures shared by the model tests."""

import pytest

import mmcluster.models.layers.row_bands as row_bands


@pytest.fixture
def small_bands(monkeypatch):
    """Bands of a few rows at test sizes (at full size a band holds 2**22 hidden values); a map of two bands runs in
    bands, not whole (WHOLE_MAP_BANDS = 1)."""

    def use(elements, whole_map_bands=1):
        monkeypatch.setattr(row_bands, 'BAND_ELEMENTS', elements)
        monkeypatch.setattr(row_bands, 'WHOLE_MAP_BANDS', whole_map_bands)

    return use
