from .shapes import INSTANCE_CLASSES, PALETTE, SEMANTIC_CLASSES, ShapesSpec, make_shapes_dataset

__all__ = ['INSTANCE_CLASSES', 'PALETTE', 'SEMANTIC_CLASSES', 'ShapesSpec', 'make_shapes_dataset']
