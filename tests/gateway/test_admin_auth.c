/* test_admin_auth.c: the admin API's tokens (gateway/admin_auth.c): parsing ROLE:NAME:SECRET
 * lists (comments, bad roles, names and secrets refused with messages that never hold a
 * secret, a name given twice, all-or-nothing), the check (missing header, wrong scheme, unknown
 * name, wrong secret, a viewer and an admin), the per-address limit on failed attempts and its
 * refill, and the constant-time comparison's answers. */
#include "admin_auth.h"
#include "test_helpers.h"

#define ADMIN_SECRET "0123456789abcdefADMIN"
#define VIEWER_SECRET "viewer-secret-0123456789"

static void test_parse(void **state) {
    (void)state;
    admin_auth a;
    admin_auth_init(&a);
    duel_error err = {0};
    assert_int_equal(admin_auth_add(&a, "admin:ops:" ADMIN_SECRET ", viewer:grafana:" VIEWER_SECRET,
                                    "DUEL_TOKENS", &err), 0);
    assert_int_equal(a.n_tokens, 2);
    assert_int_equal(a.tokens[0].role, ADMIN_ROLE_ADMIN);
    assert_string_equal(a.tokens[1].name, "grafana");
    struct { const char *text, *needle; } bad[] = {
        {"root:x:0123456789abcdef", "role must be admin or viewer"},
        {"admin:" ":0123456789abcdef", "name must be"},
        {"admin:a b:0123456789abcdef", "name may hold only"},
        {"admin:x:short", "secret must be 16"},
        {"admin:x:0123456789abcdef<", "secret may hold only"},
        {"admin:x", "expected ROLE:NAME:SECRET"},
        {"admin:ops:0123456789abcdefZZZ", "name ops is taken"}, /* already added above */
        {"viewer:new:0123456789abcdef,admin:x:bad secret here!!", "token 2"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(admin_auth_add(&a, bad[i].text, "t", &err), DUEL_EINVAL);
        if (!strstr(err.message, bad[i].needle))
            fail_msg("\"%s\": \"%s\" lacks \"%s\"", bad[i].text, err.message, bad[i].needle);
        /* a message never repeats a secret */
        assert_null(strstr(err.message, "0123456789abcdef"));
        assert_null(strstr(err.message, "bad secret"));
        assert_int_equal(a.n_tokens, 2); /* nothing of a refused list is added */
    }
    /* a file: comments and blank lines skipped */
    char dir[512], path[600];
    test_make_temp_dir("admin-auth", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/tokens", dir);
    const char *file = "# the admin token\n\nviewer:ci:abcdefghijklmnop12\r\n";
    test_write_file(path, file, strlen(file));
    assert_int_equal(admin_auth_add_file(&a, path, &err), 0);
    assert_int_equal(a.n_tokens, 3);
    snprintf(path, sizeof path, "%s/missing", dir);
    assert_int_not_equal(admin_auth_add_file(&a, path, &err), 0);
    admin_auth_free(&a);
    assert_int_equal(a.n_tokens, 0);
    assert_int_equal(a.tokens[0].secret[0], 0); /* wiped */
}

static void test_check_and_limit(void **state) {
    (void)state;
    admin_auth a;
    admin_auth_init(&a);
    duel_error err = {0};
    assert_int_equal(admin_auth_add(&a, "admin:ops:" ADMIN_SECRET ",viewer:grafana:" VIEWER_SECRET,
                                    "t", &err), 0);
    admin_role role;
    const char *who;
    double now = 1000;
    assert_int_equal(admin_auth_check(&a, "Bearer ops:" ADMIN_SECRET, "1.2.3.4", now, &role, &who),
                     ADMIN_AUTH_OK);
    assert_int_equal(role, ADMIN_ROLE_ADMIN);
    assert_string_equal(who, "ops");
    assert_int_equal(admin_auth_check(&a, "Bearer grafana:" VIEWER_SECRET, "1.2.3.4", now, &role, &who),
                     ADMIN_AUTH_OK);
    assert_int_equal(role, ADMIN_ROLE_VIEWER);
    const char *refused[] = {
        "Bearer ops:" ADMIN_SECRET "x",   /* longer */
        "Bearer ops:" "0123456789abcdefADMI", /* shorter */
        "Bearer grafana:" ADMIN_SECRET,   /* another token's secret */
        "Bearer nobody:" ADMIN_SECRET,    /* unknown name */
        "Basic b3BzOnNlY3JldA==",         /* wrong scheme */
        "Bearer " ADMIN_SECRET,           /* no name */
        "bearer ops:" ADMIN_SECRET,       /* the scheme is case-sensitive here */
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        assert_int_equal(admin_auth_check(&a, refused[i], "5.6.7.8", now, &role, &who),
                         ADMIN_AUTH_REFUSED);
        assert_int_equal(role, ADMIN_ROLE_NONE);
        assert_null(who);
    }
    assert_int_equal(admin_auth_check(&a, NULL, "9.9.9.9", now, &role, &who), ADMIN_AUTH_MISSING);
    assert_int_equal(admin_auth_check(&a, "", "9.9.9.9", now, &role, &who), ADMIN_AUTH_MISSING);
    /* 5.6.7.8 has failed 7 times: 3 more, then even the right token waits */
    for (int i = 0; i < 3; i++)
        assert_int_equal(admin_auth_check(&a, "Bearer ops:wrong-wrong-wrong", "5.6.7.8", now, &role, &who),
                         ADMIN_AUTH_REFUSED);
    assert_int_equal(admin_auth_check(&a, "Bearer ops:" ADMIN_SECRET, "5.6.7.8", now, &role, &who),
                     ADMIN_AUTH_LIMITED);
    /* other addresses are not held back */
    assert_int_equal(admin_auth_check(&a, "Bearer ops:" ADMIN_SECRET, "1.2.3.4", now, &role, &who),
                     ADMIN_AUTH_OK);
    /* one attempt comes back every 60/10 = 6 s */
    assert_int_equal(admin_auth_check(&a, "Bearer ops:" ADMIN_SECRET, "5.6.7.8", now + 3, &role, &who),
                     ADMIN_AUTH_LIMITED);
    assert_int_equal(admin_auth_check(&a, "Bearer ops:" ADMIN_SECRET, "5.6.7.8", now + 7, &role, &who),
                     ADMIN_AUTH_OK);
    admin_auth_free(&a);
}

static void test_equal(void **state) {
    (void)state;
    assert_true(admin_auth_equal("abc", 3, "abc", 3));
    assert_false(admin_auth_equal("abc", 3, "abd", 3));
    assert_false(admin_auth_equal("abc", 3, "abcd", 4));
    assert_false(admin_auth_equal("abcd", 4, "abc", 3));
    assert_false(admin_auth_equal("abc\0", 4, "abc", 3)); /* a trailing NUL is a difference */
    assert_true(admin_auth_equal("", 0, "", 0));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_check_and_limit),
        cmocka_unit_test(test_equal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
