from .paca_head import PaCaHead

__all__ = ['PaCaHead']
