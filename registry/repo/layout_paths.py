"""Where each part of a repository lives, relative to its root: one list every backend
(local directory, SFTP, srepo-server's doors) and gc agree on."""

from __future__ import annotations

OCI_LAYOUT = "oci-layout"
INDEX = "index.json"
BLOBS = "blobs/sha256"
REFS = "refs"
TMP = "tmp"
UPLOADS = "tmp/uploads"        # blob uploads in progress, resumable
LEASES = "tmp/leases"          # blobs a push in flight relies on (one file per push)
DIGEST_PINS = "srepo/digests"  # <name>/@sha256:<hex>: manifests pushed by digest only
REFERRERS = "srepo/referrers"  # <subject hex>/<hex>: descriptors of manifests with a subject
DELETED = "srepo/deleted"      # <name>/@sha256:<hex>: manifests deleted by digest under a name
BLOB_LINKS = "srepo/links"     # <name>/@<hex>: blobs uploaded or mounted to a name (HTTP door)
BLOB_UNLINKS = "srepo/unlinked"  # <name>/@<hex>: blobs deleted from a name (HTTP door)
HTTP_UPLOADS = "tmp/http-uploads"  # <uuid> and <uuid>.json: the HTTP door's upload sessions
PIN_PREFIX = "@"
# Not readable by other users: a repository holds private images (issue 14).
FILE_MODE = 0o600
DIR_MODE = 0o700
# Created with the layout, parents first, owner-only.
PRIVATE_DIRS = ("blobs", BLOBS, REFS, TMP, UPLOADS, LEASES)
# What fsck checks the permissions of (tmp holds other programs' scratch files too).
CHECKED = (OCI_LAYOUT, INDEX, "blobs", REFS, "srepo", UPLOADS, LEASES)
