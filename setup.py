"""Maps the top-level folders onto one import namespace: pipeline/ -> vlmforge.pipeline, training/ ->
vlmforge.training, common/ -> vlmforge.common. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

FOLDERS = {"vlmforge.pipeline": "pipeline", "vlmforge.training": "training", "vlmforge.common": "common"}

setup(
    package_dir=FOLDERS,
    packages=[f"{name}.{sub}" if sub else name for name, d in FOLDERS.items() for sub in ["", *find_packages(d)]],
)
