"""selfsup: data-pipeline-first self-supervised pretraining for image encoders."""

from setuptools import find_packages, setup

setup(
    name="selfsup",
    version="0.1.0",
    description="Self-supervised pretraining of image encoders, built data-pipeline-first",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["selfsup", "selfsup.*"]),
    # the built-in configs (selfsup list configs) live inside the package
    package_data={"selfsup": ["configs/*.yaml"]},
    install_requires=[
        # torch is pinned to the CPU wheel on CPU-only machines through
        # constraints/cpu.txt (see the Makefile); GPU users get their normal torch.
        "torch>=2.4",
        "numpy>=1.24",
        "numba>=0.59",
        "opencv-python-headless>=4.8",
        "simplejpeg>=1.7",
        # formats OpenCV cannot decode (GIF, some TIFF/WebP), and the bench's reference loader
        "Pillow>=9.0",
        "pyyaml>=6.0",
        "tqdm>=4.60",
    ],
    extras_require={
        "dali": ["nvidia-dali-cuda120"],
        # 3.2 is the oldest release whose interpreter runs every kernel's parity tests
        # (3.0 and 3.1 fail on tl.arange there); releases before 3.4 have no triton.knobs,
        # which selfsup.kernels.triton_interpreting() handles.
        "triton": ["triton>=3.2"],
        # selfsup profile's and selfsup plot's PNG figures
        "plot": ["matplotlib>=3.5"],
        # train.tensorboard: the metrics as TensorBoard scalars
        "tensorboard": ["tensorboard>=2.10"],
        "dev": [
            "pytest>=7", "ruff>=0.4", "safetensors>=0.4", "matplotlib>=3.5", "tensorboard>=2.10",
        ],
    },
    entry_points={"console_scripts": ["selfsup=selfsup.cli:main"]},
)
