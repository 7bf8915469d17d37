"""momok_pyg: MoMoK (Mixture of Modality Knowledge experts) for multi-modal KG completion on PyG."""
__version__ = "0.1.0"

__all__ = ["__version__"]
