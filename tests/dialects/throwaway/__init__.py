"""A throwaway dialect: proof that a vendor API plugs in with its folder and one registration line."""

from core.dialects import Dialect

DIALECT = Dialect(name="throwaway", blueprint="tests.dialects.throwaway.views:bp")
