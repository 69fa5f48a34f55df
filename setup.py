"""mmcluster: clustering-based vision transformers for MMDetection and MMSegmentation."""
import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    text = (ROOT / 'mmcluster' / 'version.py').read_text()
    return re.search(r"__version__ = '([^']+)'", text).group(1)


def runtime_requirements() -> list:
    """requirements/pins.txt without the build/test-only lines and without mmcv.

    mmcv 2.1.0 ships no wheel on PyPI; pip would try to build its sdist in an isolated environment,
    which fails. tools/setup_env.sh installs it (see docs/get_started.md).
    """
    reqs = []
    for line in (ROOT / 'requirements' / 'pins.txt').read_text().splitlines():
        if re.search(r'#\s*(build|test)\b', line):
            continue
        req = line.split('#')[0].strip()
        if req and not re.match(r'^mmcv\b', req):
            reqs.append(req)
    return reqs


setup(
    name='mmcluster',
    version=read_version(),
    description='Clustering-based vision transformers (PaCa-ViT, SecViT, ...) for MMDetection and MMSegmentation',
    long_description=(ROOT / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmcluster', 'mmcluster.*']),
    python_requires='>=3.9',
    install_requires=runtime_requirements(),
    extras_require={'tests': ['pytest>=7.4']},
    license='Apache-2.0',
    zip_safe=False,
)
