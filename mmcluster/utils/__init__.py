"""Utilities: safe checkpoint loading (``checkpoint``), MAC counting (``flops``), benchmarking
(``benchmark``), launch helpers (``launch``). Import the submodule you need; most need mmengine."""
