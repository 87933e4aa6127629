//! What the proxy says first on every upstream connection it opens (shared, dedicated, and the
//! health probe's): its own login, and HELLO 3 for a RESP3 connection.

use crate::config::UpstreamSettings;
use crate::protocol::request::Request;

/// What the proxy sends on a new upstream connection before any client request: its own
/// credentials, and HELLO 3 for a RESP3 connection. Their replies are checked, not forwarded.
pub(crate) fn setup_commands(settings: &UpstreamSettings, resp3: bool) -> Vec<Request> {
    let mut setup = Vec::new();
    if let Some(password) = settings.password.as_deref() {
        match settings.username.as_deref() {
            Some(user) => setup.push(Request::from_args(&[
                b"AUTH".as_slice(),
                user.as_bytes(),
                password.as_bytes(),
            ])),
            None => setup.push(Request::from_args(&[
                b"AUTH".as_slice(),
                password.as_bytes(),
            ])),
        }
    }
    if resp3 {
        setup.push(Request::from_args(&["HELLO", "3"]));
    }
    setup
}
