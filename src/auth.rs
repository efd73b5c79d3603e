//! Bearer tokens and roles. Each token has a name (recorded as the `actor` of every change it
//! makes), a role, and a secret. Secrets are compared in constant time against every token, so
//! timing tells nothing about which token or how much of it matched, and are never logged.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use subtle::ConstantTimeEq;

/// Tokens beyond this are refused at start (each request compares against all of them).
pub const TOKENS_MAX: usize = 1000;
/// Shorter secrets are refused at start: they could be guessed.
pub const SECRET_MIN_BYTES: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Availability, reservations, sales, returns, and all reads.
    Checkout,
    /// GET endpoints only.
    Read,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "checkout" => Some(Role::Checkout),
            "read" => Some(Role::Read),
            _ => None,
        }
    }

    /// Whether a token of this role may do what needs `required`.
    pub fn grants(self, required: Role) -> bool {
        match self {
            Role::Admin => true,
            Role::Checkout => required != Role::Admin,
            Role::Read => required == Role::Read,
        }
    }
}

#[derive(Clone)]
struct Token {
    name: Arc<str>,
    role: Role,
    secret: Vec<u8>,
}

/// Who is calling: the token's name and role (or `anonymous` with every right when no tokens
/// are configured, which the server allows only on loopback).
#[derive(Clone, Debug)]
pub struct Caller {
    /// Shared, not copied: every request hands it on (extension, handler).
    pub name: Arc<str>,
    pub role: Role,
}

#[derive(Clone, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names and roles only: never a secret.
        let entries: Vec<(&str, Role)> = self.tokens.iter().map(|t| (&*t.name, t.role)).collect();
        f.debug_struct("Tokens").field("tokens", &entries).finish()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No or unknown token: 401.
    Unauthorized,
    /// Known token, role too weak: 403.
    Forbidden { name: String },
}

impl Tokens {
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// `name:role:secret,...` (the `STOCKD_TOKENS` form).
    pub fn parse_list(text: &str) -> Result<Tokens, String> {
        let mut tokens = Tokens::default();
        for (i, entry) in text
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let mut parts = entry.splitn(3, ':');
            let (Some(name), Some(role), Some(secret)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!(
                    "STOCKD_TOKENS entry {}: expected name:role:secret",
                    i + 1
                ));
            };
            tokens.add(
                name,
                role,
                secret,
                &format!("STOCKD_TOKENS entry {}", i + 1),
            )?;
        }
        Ok(tokens)
    }

    /// One `name role secret` a line; blank lines and `#` comments are skipped.
    pub fn parse_file(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read tokens file {}: {e}", path.display()))?;
        let mut tokens = Tokens::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, secret] = fields[..] else {
                return Err(format!(
                    "{} line {}: expected `name role secret`",
                    path.display(),
                    i + 1
                ));
            };
            tokens.add(
                name,
                role,
                secret,
                &format!("{} line {}", path.display(), i + 1),
            )?;
        }
        Ok(tokens)
    }

    /// Adds the tokens of `other` (both sources may be given).
    pub fn merge(mut self, other: Tokens) -> Result<Tokens, String> {
        for token in other.tokens {
            self.push(token, "tokens file and STOCKD_TOKENS together")?;
        }
        Ok(self)
    }

    fn add(&mut self, name: &str, role: &str, secret: &str, at: &str) -> Result<(), String> {
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
        if !valid_name {
            return Err(format!(
                "{at}: token name must be 1-64 characters of A-Z a-z 0-9 . _ - @"
            ));
        }
        let role = Role::parse(role)
            .ok_or_else(|| format!("{at}: role must be admin, checkout or read"))?;
        if secret.len() < SECRET_MIN_BYTES {
            return Err(format!(
                "{at}: the secret of {name} is shorter than {SECRET_MIN_BYTES} characters"
            ));
        }
        let token = Token {
            name: Arc::from(name),
            role,
            secret: secret.as_bytes().to_vec(),
        };
        self.push(token, at)
    }

    fn push(&mut self, token: Token, at: &str) -> Result<(), String> {
        if self.tokens.iter().any(|t| t.name == token.name) {
            return Err(format!("{at}: token name {} given twice", token.name));
        }
        if self
            .tokens
            .iter()
            .any(|t| bool::from(t.secret.ct_eq(&token.secret)))
        {
            return Err(format!(
                "{at}: the secret of {} is also another token's secret",
                token.name
            ));
        }
        if self.tokens.len() >= TOKENS_MAX {
            return Err(format!("more than {TOKENS_MAX} tokens"));
        }
        self.tokens.push(token);
        Ok(())
    }

    /// Checks an `Authorization` header value against what the route needs.
    pub fn authorize(
        &self,
        authorization: Option<&[u8]>,
        required: Role,
    ) -> Result<Caller, AuthError> {
        if self.tokens.is_empty() {
            static ANONYMOUS: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("anonymous"));
            return Ok(Caller {
                name: ANONYMOUS.clone(),
                role: Role::Admin,
            });
        }
        let presented = authorization
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .map(|s| s.trim_ascii())
            .ok_or(AuthError::Unauthorized)?;
        // Compare with every token, without stopping early.
        let mut found: Option<&Token> = None;
        for token in &self.tokens {
            if bool::from(token.secret.ct_eq(presented)) {
                found = Some(token);
            }
        }
        let token = found.ok_or(AuthError::Unauthorized)?;
        if token.role.grants(required) {
            Ok(Caller {
                name: token.name.clone(),
                role: token.role,
            })
        } else {
            Err(AuthError::Forbidden {
                name: token.name.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_as_documented() {
        assert!(
            Role::Admin.grants(Role::Admin)
                && Role::Admin.grants(Role::Checkout)
                && Role::Admin.grants(Role::Read)
        );
        assert!(
            !Role::Checkout.grants(Role::Admin)
                && Role::Checkout.grants(Role::Checkout)
                && Role::Checkout.grants(Role::Read)
        );
        assert!(
            !Role::Read.grants(Role::Admin)
                && !Role::Read.grants(Role::Checkout)
                && Role::Read.grants(Role::Read)
        );
    }

    #[test]
    fn parses_and_authorizes() {
        let tokens =
            Tokens::parse_list("ops:admin:aaaaaaaaaaaaaaaa1, shop:checkout:bbbbbbbbbbbbbbbb2")
                .unwrap();
        let caller = tokens
            .authorize(Some(b"Bearer bbbbbbbbbbbbbbbb2"), Role::Checkout)
            .unwrap();
        assert_eq!(&*caller.name, "shop");
        assert_eq!(
            tokens
                .authorize(Some(b"Bearer bbbbbbbbbbbbbbbb2"), Role::Admin)
                .err(),
            Some(AuthError::Forbidden {
                name: "shop".into()
            })
        );
        assert_eq!(
            tokens.authorize(Some(b"Bearer nope"), Role::Read).err(),
            Some(AuthError::Unauthorized)
        );
        assert_eq!(
            tokens.authorize(None, Role::Read).err(),
            Some(AuthError::Unauthorized)
        );
        assert_eq!(
            tokens.authorize(Some(b"Basic xyz"), Role::Read).err(),
            Some(AuthError::Unauthorized)
        );
    }

    #[test]
    fn refuses_weak_or_ambiguous_configuration() {
        assert!(Tokens::parse_list("a:admin:short").is_err());
        assert!(Tokens::parse_list("a:boss:aaaaaaaaaaaaaaaa1").is_err());
        assert!(Tokens::parse_list("a:admin:aaaaaaaaaaaaaaaa1,a:read:bbbbbbbbbbbbbbbb2").is_err());
        assert!(Tokens::parse_list("a:admin:aaaaaaaaaaaaaaaa1,b:read:aaaaaaaaaaaaaaaa1").is_err());
        assert!(Tokens::parse_list("a:admin").is_err());
        let debug = format!(
            "{:?}",
            Tokens::parse_list("a:admin:aaaaaaaaaaaaaaaa1").unwrap()
        );
        assert!(!debug.contains("aaaa"), "{debug}");
    }
}
