"""`import mmcluster` registers everything where mmdet, mmseg and timm configs look."""

import subprocess
import sys


def test_import_registers_in_mmdet_mmseg_and_timm():
    code = (
        'import mmcluster, timm\n'
        'from mmdet.registry import MODELS as D\n'
        'from mmseg.registry import MODELS as S\n'
        'assert D.get("PaCaViT") is S.get("PaCaViT") is mmcluster.models.PaCaViT\n'
        'assert S.get("PaCaHead") is mmcluster.models.PaCaHead\n'
        'from mmdet.models.backbones import SwinTransformer as DetSwin\n'
        'from mmseg.models.backbones import SwinTransformer as SegSwin\n'
        'assert issubclass(D.get("SECSwinTransformer"), DetSwin) and issubclass(S.get("SECSwinTransformer"), SegSwin)\n'
        'from mmcluster.models.backbones import expedite\n'
        'assert S.get("HourglassVisionTransformer") is expedite.HourglassVisionTransformer\n'
        'assert S.get("HourglassEncoderDecoder") is expedite.HourglassEncoderDecoder\n'
        'assert set(timm.list_models("paca_*")) == {"paca_tiny", "paca_small", "paca_base", "paca_small_mlp",'
        ' "paca_tiny_teacher", "paca_small_teacher", "paca_base_teacher"}\n'
    )
    subprocess.run([sys.executable, '-c', code], check=True)  # a fresh interpreter: nothing imported before


def test_nothing_registered_without_the_import():
    code = (
        'from mmdet.registry import MODELS as D\n'
        'from mmseg.registry import MODELS as S\n'
        'assert D.get("PaCaViT") is None and S.get("PaCaHead") is None\n'
        'assert D.get("SECSwinTransformer") is None is S.get("SECSwinTransformer")\n'
    )
    subprocess.run([sys.executable, '-c', code], check=True)
