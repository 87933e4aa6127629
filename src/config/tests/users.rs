//! Users, `requirepass_sha256`, upstream credentials, and secrets kept out of every message.

use super::{assert_problem, parse, problems, EXAMPLE};
use crate::command::Categories;
use crate::config::file::RawSettings;
use crate::policy::auth::{self, CommandAccess, KeyAccess, Users};
use crate::policy::keyspace::{Membership, Pattern};

/// `printf %s password | sha256sum`
const PASSWORD_SHA256: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

const TWO_KEYSPACES: &str = r#"
        [[keyspace]]
        name = "limits"
        patterns = ["rl:"]
        mode = "fail_closed"
        [[keyspace]]
        name = "page-cache"
        patterns = ["cache:*"]
        mode = "degraded"
    "#;

fn users(text: &str) -> Users {
    parse(&format!("{text}\n{TWO_KEYSPACES}")).unwrap().users
}

fn user_problems(text: &str) -> Vec<String> {
    problems(&format!("{text}\n{TWO_KEYSPACES}"))
}

#[test]
fn no_password_by_default() {
    let users = parse("").unwrap().users;
    assert!(!users.required());
    assert_eq!(users, Users::open());
    assert_eq!(
        parse("requirepass_sha256 = \"\"").unwrap().users,
        Users::open()
    );
}

#[test]
fn requirepass_is_the_default_users_password() {
    for hex in [PASSWORD_SHA256.to_owned(), PASSWORD_SHA256.to_uppercase()] {
        let users = parse(&format!("requirepass_sha256 = {hex:?}"))
            .unwrap()
            .users;
        assert!(users.required());
        let id = users.auth(None, b"password").unwrap();
        assert_eq!(users.user(id).name(), "default");
        assert_eq!(users.user(id).commands(), &CommandAccess::All);
        assert_eq!(users.user(id).keys(), &KeyAccess::All);
        assert!(users.authenticate(b"default", b"passwordx").is_none());
    }
}

#[test]
fn users_are_typed() {
    let users = users(&format!(
        r#"
            requirepass_sha256 = "{PASSWORD_SHA256}"
            [[user]]
            name = "reports"
            password_sha256 = "{PASSWORD_SHA256}"
            keyspaces = ["page-cache", "default"]
            key_patterns = ["report:", "r?:*"]
            categories = ["read", "CONNECTION"]
            [[user]]
            name = "ops"
            password_sha256 = "{PASSWORD_SHA256}"
            [[user]]
            name = "all-star"
            password_sha256 = "{PASSWORD_SHA256}"
            keyspaces = ["*", "limits"]
            key_patterns = ["x"]
            categories = ["read", "all"]
            [[user]]
            name = "nothing"
            password_sha256 = "{PASSWORD_SHA256}"
            keyspaces = []
            categories = []
            [[user]]
            name = "patterns-only"
            password_sha256 = "{PASSWORD_SHA256}"
            key_patterns = ["tmp:"]
            "#
    ));
    let by_name = |name: &str| {
        users
            .iter()
            .find(|(_, u)| u.name() == name)
            .unwrap_or_else(|| panic!("{name}"))
            .1
    };
    let names: Vec<&str> = users.iter().map(|(_, u)| u.name()).collect();
    assert_eq!(
        names,
        [
            "default",
            "reports",
            "ops",
            "all-star",
            "nothing",
            "patterns-only"
        ]
    );
    let reports = by_name("reports");
    assert_eq!(
        reports.commands(),
        &CommandAccess::Categories(Categories::READ | Categories::CONNECTION)
    );
    assert_eq!(
        reports.keys(),
        &KeyAccess::Only {
            patterns: vec![Pattern::parse(b"report:"), Pattern::parse(b"r?:*")],
            keyspaces: vec![Membership::Named(1), Membership::Default],
        }
    );
    for name in ["ops", "all-star"] {
        assert_eq!(by_name(name).commands(), &CommandAccess::All, "{name}");
        assert_eq!(by_name(name).keys(), &KeyAccess::All, "{name}");
    }
    assert_eq!(
        by_name("nothing").commands(),
        &CommandAccess::Categories(Categories::empty())
    );
    assert_eq!(
        by_name("nothing").keys(),
        &KeyAccess::Only {
            patterns: vec![],
            keyspaces: vec![]
        }
    );
    assert_eq!(
        by_name("patterns-only").keys(),
        &KeyAccess::Only {
            patterns: vec![Pattern::parse(b"tmp:")],
            keyspaces: vec![]
        }
    );
    let id = users.authenticate(b"reports", b"password").unwrap();
    assert_eq!(users.user(id).name(), "reports");
}

#[test]
fn users_are_checked() {
    let found = user_problems(&format!(
        r#"
            requirepass_sha256 = "abc"
            [[user]]
            name = ""
            password_sha256 = "{PASSWORD_SHA256}"
            [[user]]
            name = "two words"
            password_sha256 = "not a digest"
            [[user]]
            name = "app"
            password_sha256 = ""
            keyspaces = ["limits", "sessions"]
            key_patterns = ["ok:", ""]
            categories = ["read", "@write", "bogus"]
            [[user]]
            name = "app"
            password_sha256 = "{PASSWORD_SHA256}"
            "#
    ));
    let places: Vec<&str> = found
        .iter()
        .map(|p| p.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        places,
        [
            "requirepass_sha256",
            "user[0].name",
            "user[1].name",
            "user[1].password_sha256",
            "user[2].password_sha256",
            "user[2].categories",
            "user[2].keyspaces",
            "user[2].key_patterns",
            "user[3].name",
        ],
        "{found:#?}"
    );
    let all = found.join("\n");
    for needle in [
        "requirepass_sha256: is not a SHA-256 digest: write 64 hex digits",
        "user[0].name: is empty",
        "\"two words\" contains a space",
        "user[2].password_sha256: is required",
        "write \"write\", without the @",
        "keyspace \"sessions\" is not defined",
        "an empty pattern would match every key",
        "user[3].name: user \"app\" is defined twice",
    ] {
        assert!(all.contains(needle), "{needle:?} not in {all}");
    }
    let found = user_problems(
        "[[user]]\nname = \"u\"\npassword_sha256 = \"x\"\ncategories = [\"bogus\"]\n",
    );
    assert!(
        found[1].contains(
            "\"bogus\" is not an ACL category; use \"all\" or some of: keyspace, read, write,"
        ),
        "{found:?}"
    );
}

#[test]
fn default_user_is_configured_one_way_only() {
    let text = format!(
        "requirepass_sha256 = \"{PASSWORD_SHA256}\"\n[[user]]\nname = \"default\"\npassword_sha256 = \"{PASSWORD_SHA256}\"\n"
    );
    assert_problem(
        &text,
        "user[0].name",
        "user \"default\" and requirepass_sha256 both set the default user's password",
    );
    // Alone, a [[user]] named default replaces the implicit one, permissions and all.
    let users = users(&format!(
        "[[user]]\nname = \"default\"\npassword_sha256 = \"{PASSWORD_SHA256}\"\ncategories = [\"read\"]\n"
    ));
    let id = users.auth(None, b"password").unwrap();
    assert_eq!(
        users.user(id).commands(),
        &CommandAccess::Categories(Categories::READ)
    );
    // Users without a `default`: no one to log in as with AUTH <password>.
    let users = users_without_default();
    assert!(users.required());
    assert_eq!(users.default_user(), None);
    assert_eq!(
        users.auth(None, b"password"),
        Err(auth::AuthError::WrongPass)
    );
}

fn users_without_default() -> Users {
    users(&format!(
        "[[user]]\nname = \"app\"\npassword_sha256 = \"{PASSWORD_SHA256}\"\n"
    ))
}

#[test]
fn a_user_needs_a_name_and_a_digest() {
    assert_problem(
        "[[user]]\nname = \"app\"\n",
        "test.toml:1:1",
        "missing field `password_sha256`",
    );
    assert_problem(
        "[[user]]\nname = \"app\"\npassword_sha256 = \"x\"\nkeys = []\n",
        "test.toml:4:1",
        "user[0].keys: unknown field `keys`",
    );
}

#[test]
fn upstream_credentials() {
    let upstream = parse("").unwrap().upstream;
    assert_eq!((upstream.username, upstream.password), (None, None));
    let upstream = parse("[upstream]\npassword = \"pw\"\n").unwrap().upstream;
    assert_eq!(
        (upstream.username, upstream.password.as_deref()),
        (None, Some("pw"))
    );
    assert_problem(
        "[upstream]\nusername = \"proxy\"\n",
        "upstream.username",
        "needs upstream.password",
    );
    assert_problem(
        "[upstream]\nusername = \"a b\"\npassword = \"pw\"\n",
        "upstream.username",
        "contains a space",
    );
}

#[test]
fn secrets_never_show() {
    const PLAIN: &str = "hunter2-plaintext";
    let text = format!(
        r#"
            requirepass_sha256 = "{PASSWORD_SHA256}"
            [upstream]
            username = "proxy"
            password = "{PLAIN}"
            [[user]]
            name = "app"
            password_sha256 = "{PASSWORD_SHA256}"
            "#
    );
    let settings = parse(&text).unwrap();
    let debug = format!(
        "{settings:?} {:?}",
        toml::from_str::<RawSettings>(&text).unwrap()
    );
    for secret in [PLAIN, PASSWORD_SHA256] {
        assert!(!debug.contains(secret), "{debug}");
    }
    assert!(debug.contains("password: Some(\"<redacted>\")"), "{debug}");
    // A plaintext password in a digest's place, or a value of the wrong type, is never
    // quoted back.
    for bad in [
        format!("requirepass_sha256 = \"{PLAIN}\""),
        format!("[[user]]\nname = \"a\"\npassword_sha256 = \"{PLAIN}\""),
        "requirepass_sha256 = 987654321".to_owned(),
        "[upstream]\npassword = 987654321".to_owned(),
        "[upstream]\npassword = true".to_owned(),
    ] {
        let shown = parse(&bad).unwrap_err().to_string();
        assert!(
            !shown.contains(PLAIN) && !shown.contains("987654321"),
            "{shown}"
        );
    }
    assert_problem(
        "[upstream]\npassword = 987654321",
        "test.toml:2:12",
        "upstream.password: invalid type: a number, expected a quoted string",
    );
}

#[test]
fn example_user_block_is_valid() {
    // The commented-out [[user]] of the example, uncommented, is a working config.
    let block: Vec<&str> = EXAMPLE
        .lines()
        .skip_while(|line| *line != "# [[user]]")
        .take_while(|line| line.starts_with("# "))
        .map(|line| &line[2..])
        .collect();
    assert!(block.len() > 3, "no [[user]] example found");
    let text = format!("{EXAMPLE}\n{}\n", block.join("\n"));
    let users = parse(&text).unwrap().users;
    assert!(users.required());
    assert!(users
        .iter()
        .any(|(_, u)| matches!(u.keys(), KeyAccess::Only { .. })));
}
