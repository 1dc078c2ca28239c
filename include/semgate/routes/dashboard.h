/* The dashboard page compiled into the binary: src/routes/dashboard/
 * (index.html, style.css, app.js) inlined into one page by embed.py at
 * build time. Static, read-only, shared by every thread. */
#ifndef SEMGATE_DASHBOARD_H
#define SEMGATE_DASHBOARD_H

#include <stddef.h>

/* The page, dashboard_page_len bytes of UTF-8 HTML (NUL after them). */
extern const char dashboard_page[];
extern const size_t dashboard_page_len;
/* Its Content-Security-Policy: the page's own script and style (by
 * SHA-256), network calls to the gateway itself, nothing else. */
extern const char dashboard_csp[];

#endif
