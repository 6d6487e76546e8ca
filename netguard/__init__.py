"""netguard: keep container pulls inside the registries an organization allows."""

__version__ = "0.1.0"
