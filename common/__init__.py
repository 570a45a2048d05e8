"""The leaf pieces every package uses: the error hierarchy and exit codes, file helpers, and
Home, the one object that names every path under the store. Imports no other package."""
