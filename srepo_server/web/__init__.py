"""srepo-server's web page: a read-only, server-rendered browser of the repository, served by
the HTTP door at `/` under the same authentication as the API. No JavaScript.

routes.render is the door's one entry point; views.py gathers what a page shows from the
repository, pages.py turns it into HTML (markup.py escapes every value, svg.py draws the
shared/own bars).
"""
