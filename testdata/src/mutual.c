/*
 * Two and three replaced functions referencing each other: every call and
 * every stored pointer between them goes to the originals (which, while the
 * payload is applied, jump to the replacements).
 */
#include "fixture.h"

noinline int is_even(int n);
noinline int is_odd(int n);
noinline int ping(int n);
noinline int pong(int n);
noinline int pang(int n);

int is_even(int n) { return n == 0 ? 1 : is_odd(n - 1); }
int is_odd(int n) { return n == 0 ? 0 : is_even(n - 1); }

int ping(int n) { return n <= 0 ? 0 : pong(n - 1) + 1; }
int pong(int n) { return n <= 0 ? 0 : pang(n - 1) + 2; }
int pang(int n) { return n <= 0 ? 0 : ping(n - 1) + 3; }

int (*const ring[])(int) = { ping, pong, pang, is_even, is_odd };

LIVEPATCH_FUNC(lp_is_even, "is_even", is_even, 0);
LIVEPATCH_FUNC(lp_is_odd, "is_odd", is_odd, 0);
LIVEPATCH_FUNC(lp_ping, "ping", ping, 0);
LIVEPATCH_FUNC(lp_pong, "pong", pong, 0);
LIVEPATCH_FUNC(lp_pang, "pang", pang, 0);
