//! OAuth2 bearer tokens.
//!
//! The API is an OAuth2 resource server: every `/v1` request carries a JWT signed with RS256
//! or ES256 by the configured issuer. [`Authenticator`] checks the signature against the
//! issuer's published keys (a JWKS, fetched and cached, fetched again when a token names a key
//! it does not know), then the issuer, audience, expiry and not-before claims. What the token
//! grants is a [`Principal`]: its subject (the customer) and its scopes.
//!
//! For development the deployment is its own issuer ([`SigningKey`]): an ES256 key created on
//! first use in `auth.dev_key_file`, published at `/.well-known/jwks.json` and used by
//! `orderflow token` to mint tokens. With `auth.mode = "oidc"` the keys come from any OpenID
//! Connect provider (Keycloak in docker-compose.yml) instead.
//!
//! A token that verified is remembered ([`Verified`]) until it expires, for at most
//! [`VERIFIED_FOR`], and only while the key set that verified it is the current one: a client
//! sends the same token with every request, and the signature check (P-256 or RSA) was the
//! largest single cost of a request. A token is never accepted from memory after its `exp`,
//! nor once the issuer's keys were fetched again (a key rotated out drops what it verified).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, RSAKeyParameters, RSAKeyType,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{AuthConfig, AuthMode};

/// The scopes the API knows.
pub mod scopes {
    /// Read one's own orders (and their payment, documents, notifications, events).
    pub const ORDERS_READ: &str = "orders:read";
    /// Place and cancel one's own orders.
    pub const ORDERS_WRITE: &str = "orders:write";
    /// Read and cancel every customer's orders, and place orders for any customer.
    pub const ORDERS_ADMIN: &str = "orders:admin";
    /// Read the catalogue.
    pub const CATALOG_READ: &str = "catalog:read";
    /// Create products and change prices and stock.
    pub const CATALOG_ADMIN: &str = "catalog:admin";
    /// List and download one's own files.
    pub const FILES_READ: &str = "files:read";
    /// Upload and delete one's own files.
    pub const FILES_WRITE: &str = "files:write";
    /// Every scope (the default of `orderflow token`).
    pub const ALL: [&str; 7] = [
        ORDERS_READ,
        ORDERS_WRITE,
        ORDERS_ADMIN,
        CATALOG_READ,
        CATALOG_ADMIN,
        FILES_READ,
        FILES_WRITE,
    ];
}

/// Who a valid token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`: the customer id of a customer's token.
    pub subject: String,
    pub scopes: BTreeSet<String>,
}

impl Principal {
    pub fn has(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    /// May act on every customer's orders.
    pub fn is_admin(&self) -> bool {
        self.has(scopes::ORDERS_ADMIN)
    }

    /// May see or change what `owner` owns: it is theirs, or the caller is an admin.
    pub fn may_access(&self, owner: &str) -> bool {
        self.subject == owner || self.is_admin()
    }
}

/// Why a request is not authenticated. The text is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an Authorization: Bearer <token> header is required")]
    Missing,
    #[error("the bearer token is invalid: {0}")]
    Invalid(&'static str),
    /// The issuer's keys cannot be fetched and none are cached: the detail is logged only.
    #[error("the token issuer's keys are unavailable")]
    KeysUnavailable(String),
}

impl AuthError {
    /// A bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid(r) => r,
            AuthError::KeysUnavailable(_) => "keys_unavailable",
        }
    }
}

/// The claims this API reads (and `orderflow token` writes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Space-separated scopes (RFC 8693 / OAuth2 `scope`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

impl Claims {
    /// Claims for `sub` with `scopes`, valid from now for `ttl`.
    pub fn new(config: &AuthConfig, sub: &str, scopes: &[&str], ttl: Duration) -> Claims {
        let now = unix_now();
        Claims {
            iss: config.issuer.clone(),
            aud: config.audience.clone(),
            sub: sub.to_owned(),
            exp: now + ttl.as_secs(),
            iat: now,
            nbf: None,
            scope: scopes.join(" "),
        }
    }
}

/// What a token may carry besides the registered claims: scopes as a string (`scope`) or a
/// list (`scp`, as some providers write them).
#[derive(Debug, Deserialize)]
struct TokenClaims {
    sub: String,
    /// Required by the validation; kept to bound how long the verified token is remembered.
    exp: u64,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<Vec<String>>,
}

/// A token from the development issuer (`auth.dev_key_file`, created when missing) for `sub`
/// with `scopes`, valid for `ttl`: what `orderflow token`, the demo and the load generator use.
pub fn mint_dev_token(
    config: &AuthConfig,
    sub: &str,
    scopes: &[&str],
    ttl: Duration,
) -> Result<String, KeyError> {
    if config.mode != AuthMode::Dev {
        return Err(KeyError::Rejected(
            "tokens can be minted only with auth.mode = \"dev\"; get them from the OIDC provider"
                .into(),
        ));
    }
    let key = SigningKey::load_or_create(Path::new(&config.dev_key_file))?;
    key.sign(&Claims::new(config, sub, scopes, ttl))
}

/// Default request headers carrying `token` as a bearer token.
pub fn bearer_headers(token: &str) -> Result<reqwest::header::HeaderMap, KeyError> {
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| KeyError::Rejected(e.to_string()))?;
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(headers)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A key that signs tokens: the development issuer's, or a test's.
pub struct SigningKey {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: Jwk,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("signing key: {0}")]
    Rejected(String),
}

impl SigningKey {
    /// A new random ES256 key, with its PKCS#8 document (to store).
    pub fn generate_es256() -> Result<(SigningKey, Vec<u8>), KeyError> {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| KeyError::Rejected(e.to_string()))?;
        let der = pkcs8.as_ref().to_vec();
        Ok((SigningKey::from_es256_pkcs8(&der)?, der))
    }

    /// An ES256 key from its PKCS#8 document.
    pub fn from_es256_pkcs8(der: &[u8]) -> Result<SigningKey, KeyError> {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| KeyError::Rejected(e.to_string()))?;
        // An uncompressed P-256 point: 0x04, x (32 bytes), y (32 bytes).
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err(KeyError::Rejected("not an uncompressed P-256 point".into()));
        }
        let kid = thumbprint(point);
        let jwk = Jwk {
            common: common(&kid, KeyAlgorithm::ES256),
            algorithm: AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: EllipticCurve::P256,
                x: URL_SAFE_NO_PAD.encode(&point[1..33]),
                y: URL_SAFE_NO_PAD.encode(&point[33..]),
            }),
        };
        Ok(SigningKey {
            alg: Algorithm::ES256,
            kid,
            encoding: EncodingKey::from_ec_der(der),
            jwk,
        })
    }

    /// An RS256 key from its PKCS#1 DER document (`openssl genrsa -traditional`, as DER).
    pub fn from_rs256_der(der: &[u8]) -> Result<SigningKey, KeyError> {
        let pair =
            ring::rsa::KeyPair::from_der(der).map_err(|e| KeyError::Rejected(e.to_string()))?;
        let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
        let kid = thumbprint(&public.n);
        let jwk = Jwk {
            common: common(&kid, KeyAlgorithm::RS256),
            algorithm: AlgorithmParameters::RSA(RSAKeyParameters {
                key_type: RSAKeyType::RSA,
                n: URL_SAFE_NO_PAD.encode(&public.n),
                e: URL_SAFE_NO_PAD.encode(&public.e),
            }),
        };
        Ok(SigningKey {
            alg: Algorithm::RS256,
            kid,
            encoding: EncodingKey::from_rsa_der(der),
            jwk,
        })
    }

    /// The development issuer's key: read from `path`, or created there (mode 0600) when the
    /// file does not exist. Processes starting together agree on one key: the file appears
    /// whole or not at all (written aside, then linked into place; a process that loses the
    /// race reads the winner's).
    pub fn load_or_create(path: &Path) -> Result<SigningKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(der) => return SigningKey::from_es256_pkcs8(&der),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            Err(_) => {}
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let (key, der) = SigningKey::generate_es256()?;
        let aside = path.with_extension(format!("tmp{}", std::process::id()));
        write_private(&aside, &der).map_err(io)?;
        let linked = std::fs::hard_link(&aside, path);
        let _ = std::fs::remove_file(&aside);
        match linked {
            Ok(()) => {
                tracing::info!(path = %path.display(), kid = %key.kid, "created the development signing key");
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let der = std::fs::read(path).map_err(io)?;
                SigningKey::from_es256_pkcs8(&der)
            }
            Err(e) => Err(io(e)),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half, as published in a JWKS.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Signs `claims` (any JSON object) with this key, naming it in the header's `kid`.
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String, KeyError> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| KeyError::Rejected(e.to_string()))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn common(kid: &str, alg: KeyAlgorithm) -> CommonParameters {
    CommonParameters {
        public_key_use: Some(PublicKeyUse::Signature),
        key_id: Some(kid.to_owned()),
        key_algorithm: Some(alg),
        ..CommonParameters::default()
    }
}

/// A key id derived from the public key, so a key keeps its id wherever it is loaded.
fn thumbprint(public: &[u8]) -> String {
    let digest = Sha256::digest(public);
    URL_SAFE_NO_PAD.encode(&digest[..12])
}

/// One verification key of the issuer.
struct VerifyKey {
    alg: Algorithm,
    key: DecodingKey,
}

/// The issuer's keys as last fetched.
struct KeySet {
    keys: HashMap<String, VerifyKey>,
    fetched: Instant,
}

impl KeySet {
    /// The RS256 and ES256 (P-256) signing keys of `set`; other keys are skipped.
    fn from_jwks(set: &JwkSet) -> KeySet {
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            if matches!(
                jwk.common.public_key_use,
                Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
            ) {
                continue;
            }
            let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
                (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
                    if p.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => continue,
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            keys.insert(kid, VerifyKey { alg, key });
        }
        KeySet {
            keys,
            fetched: Instant::now(),
        }
    }

    /// The key a token names; a token without `kid` may use the only key of its algorithm.
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&VerifyKey> {
        match kid {
            Some(kid) => self.keys.get(kid).filter(|k| k.alg == alg),
            None => {
                let mut of_alg = self.keys.values().filter(|k| k.alg == alg);
                match (of_alg.next(), of_alg.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        }
    }
}

/// Where the keys come from.
enum Source {
    /// The development issuer's own key.
    Fixed,
    /// An OpenID Connect provider's JWKS.
    Remote {
        http: reqwest::Client,
        /// `auth.jwks_url`, or empty to discover it from the issuer.
        jwks_url: String,
        discovered: tokio::sync::Mutex<Option<String>>,
        /// Serialises fetches and remembers when the last one started.
        last_fetch: tokio::sync::Mutex<Option<Instant>>,
    },
}

/// Validates bearer tokens. Shared by all requests of a process.
pub struct Authenticator {
    issuer: String,
    audience: String,
    leeway_secs: u64,
    refresh_after: Duration,
    min_refresh: Duration,
    keys: RwLock<Arc<KeySet>>,
    source: Source,
    /// The development issuer's key (`auth.mode = "dev"`), published by the API.
    dev_key: Option<Arc<SigningKey>>,
    /// Tokens that verified recently.
    verified: Verified,
}

/// How long a verified token is remembered at most (its `exp` may end it earlier).
pub const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// The most tokens remembered; when full, expired ones are dropped, and if none was, all.
const VERIFIED_MAX: usize = 10_000;

/// Tokens that verified, by their exact text: the principal they grant, until when, and the
/// key set that verified them.
#[derive(Default)]
struct Verified {
    tokens: Mutex<HashMap<String, VerifiedToken>>,
}

struct VerifiedToken {
    principal: Principal,
    /// Unix seconds after which the token is expired (its `exp` plus the leeway).
    valid_until: u64,
    /// When this entry is dropped at the latest ([`VERIFIED_FOR`] after it was verified).
    remembered_until: Instant,
    keys: Arc<KeySet>,
}

impl Verified {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VerifiedToken>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The principal of `token` if it verified with `keys` (still the current set) and is
    /// valid at `now` (unix seconds).
    fn get(&self, token: &str, keys: &Arc<KeySet>, now: u64) -> Option<Principal> {
        let mut tokens = self.lock();
        let entry = tokens.get(token)?;
        if entry.valid_until >= now
            && entry.remembered_until > Instant::now()
            && Arc::ptr_eq(&entry.keys, keys)
        {
            return Some(entry.principal.clone());
        }
        tokens.remove(token);
        None
    }

    fn insert(&self, token: &str, entry: VerifiedToken) {
        let mut tokens = self.lock();
        if tokens.len() >= VERIFIED_MAX {
            let now = unix_now();
            let instant = Instant::now();
            tokens.retain(|_, e| e.valid_until >= now && e.remembered_until > instant);
            if tokens.len() >= VERIFIED_MAX {
                tokens.clear();
            }
        }
        tokens.insert(token.to_owned(), entry);
    }
}

impl Authenticator {
    /// From the configuration: the development key (created when missing), or an OIDC issuer
    /// whose keys are fetched on first use.
    pub fn from_config(config: &AuthConfig) -> Result<Authenticator, KeyError> {
        let (keys, source, dev_key) = match config.mode {
            AuthMode::Dev => {
                let key = SigningKey::load_or_create(Path::new(&config.dev_key_file))?;
                let set = JwkSet {
                    keys: vec![key.jwk().clone()],
                };
                (KeySet::from_jwks(&set), Source::Fixed, Some(Arc::new(key)))
            }
            AuthMode::Oidc => {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|e| KeyError::Rejected(e.to_string()))?;
                let empty = KeySet {
                    keys: HashMap::new(),
                    fetched: Instant::now(),
                };
                let source = Source::Remote {
                    http,
                    jwks_url: config.jwks_url.clone(),
                    discovered: tokio::sync::Mutex::new(None),
                    last_fetch: tokio::sync::Mutex::new(None),
                };
                (empty, source, None)
            }
        };
        Ok(Authenticator {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_secs: config.leeway_secs,
            refresh_after: Duration::from_secs(config.jwks_refresh_secs.max(1)),
            min_refresh: Duration::from_millis(config.jwks_min_refresh_ms),
            keys: RwLock::new(Arc::new(keys)),
            source,
            dev_key,
            verified: Verified::default(),
        })
    }

    /// The development issuer's key, when this deployment is its own issuer.
    pub fn dev_key(&self) -> Option<&Arc<SigningKey>> {
        self.dev_key.as_ref()
    }

    /// The public keys this deployment publishes (the development key; none with OIDC).
    pub fn published_jwks(&self) -> Option<JwkSet> {
        self.dev_key.as_ref().map(|k| JwkSet {
            keys: vec![k.jwk().clone()],
        })
    }

    fn current(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Checks the `Authorization` header's bearer token (or finds it verified recently).
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let token = bearer(authorization).ok_or(AuthError::Missing)?;
        if let Some(principal) = self.verified.get(token, &self.current(), unix_now()) {
            return Ok(principal);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("malformed token or unsupported algorithm"))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(AuthError::Invalid("unsupported algorithm"));
        }
        let mut keys = self.current();
        let stale = keys.fetched.elapsed() >= self.refresh_after;
        if keys.find(header.kid.as_deref(), header.alg).is_none() || stale {
            keys = self.refresh(keys, stale).await?;
        }
        let key = keys
            .find(header.kid.as_deref(), header.alg)
            .ok_or(AuthError::Invalid("unknown signing key"))?;
        let mut validation = Validation::new(key.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway_secs;
        let data = jsonwebtoken::decode::<TokenClaims>(token, &key.key, &validation)
            .map_err(|e| AuthError::Invalid(describe(e.kind())))?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(AuthError::Invalid("empty subject"));
        }
        let mut scopes: BTreeSet<String> = claims
            .scope
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        scopes.extend(claims.scp.unwrap_or_default());
        let principal = Principal {
            subject: claims.sub,
            scopes,
        };
        // Not yet valid tokens were refused above, so from now on only the expiry matters.
        self.verified.insert(
            token,
            VerifiedToken {
                principal: principal.clone(),
                valid_until: claims.exp.saturating_add(self.leeway_secs),
                remembered_until: Instant::now() + VERIFIED_FOR,
                keys,
            },
        );
        Ok(principal)
    }

    /// Fetches the issuer's keys again (at most once per `jwks_min_refresh_ms`); keeps the
    /// cached ones when the fetch fails and some are cached.
    async fn refresh(&self, seen: Arc<KeySet>, stale: bool) -> Result<Arc<KeySet>, AuthError> {
        let Source::Remote {
            http,
            jwks_url,
            discovered,
            last_fetch,
        } = &self.source
        else {
            return Ok(seen);
        };
        let mut last = last_fetch.lock().await;
        let current = self.current();
        if !Arc::ptr_eq(&current, &seen) {
            // Another request fetched while this one waited.
            return Ok(current);
        }
        if last.is_some_and(|t| t.elapsed() < self.min_refresh)
            && !(stale && current.keys.is_empty())
        {
            return Ok(current);
        }
        *last = Some(Instant::now());
        let fetched = async {
            let url = match jwks_url.as_str() {
                "" => self.discover(http, discovered).await?,
                url => url.to_owned(),
            };
            let set: JwkSet = get_json(http, &url, "JWKS").await?;
            Ok::<_, String>(KeySet::from_jwks(&set))
        }
        .await;
        match fetched {
            Ok(set) => {
                tracing::info!(keys = set.keys.len(), "fetched the token issuer's keys");
                metrics::counter!(crate::metrics::AUTH_JWKS_FETCHES, "outcome" => "ok")
                    .increment(1);
                let set = Arc::new(set);
                match self.keys.write() {
                    Ok(mut k) => *k = set.clone(),
                    Err(poisoned) => *poisoned.into_inner() = set.clone(),
                }
                Ok(set)
            }
            Err(e) => {
                metrics::counter!(crate::metrics::AUTH_JWKS_FETCHES, "outcome" => "error")
                    .increment(1);
                if current.keys.is_empty() {
                    Err(AuthError::KeysUnavailable(e))
                } else {
                    tracing::warn!(error = %e, "could not refresh the token issuer's keys; using the cached ones");
                    Ok(current)
                }
            }
        }
    }

    /// The JWKS address from the issuer's OpenID Connect discovery document.
    async fn discover(
        &self,
        http: &reqwest::Client,
        discovered: &tokio::sync::Mutex<Option<String>>,
    ) -> Result<String, String> {
        let mut cached = discovered.lock().await;
        if let Some(url) = cached.as_ref() {
            return Ok(url.clone());
        }
        #[derive(Deserialize)]
        struct Discovery {
            jwks_uri: String,
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let doc: Discovery = get_json(http, &url, "discovery document").await?;
        *cached = Some(doc.jwks_uri.clone());
        Ok(doc.jwks_uri)
    }
}

/// `GET url` as JSON; the error names `what` and the address.
async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    what: &str,
) -> Result<T, String> {
    http.get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("GET {url}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("{what} at {url}: {e}"))
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
fn bearer(header: Option<&str>) -> Option<&str> {
    let (scheme, token) = header?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "expired",
        K::ImmatureSignature => "not yet valid",
        K::InvalidIssuer => "wrong issuer",
        K::InvalidAudience => "wrong audience",
        K::InvalidSignature => "bad signature",
        K::InvalidAlgorithm => "algorithm does not match the key",
        K::MissingRequiredClaim(_) => "a required claim is missing",
        _ => "malformed token",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_config(dir: &Path) -> AuthConfig {
        AuthConfig {
            dev_key_file: dir.join("key.p8").display().to_string(),
            ..AuthConfig::default()
        }
    }

    /// A development issuer with its key in a fresh directory.
    fn dev_issuer() -> (
        std::path::PathBuf,
        AuthConfig,
        Authenticator,
        Arc<SigningKey>,
    ) {
        let dir = tempdir();
        let config = dev_config(&dir);
        let auth = Authenticator::from_config(&config).unwrap_or_else(|e| panic!("{e}"));
        let key = auth
            .dev_key()
            .cloned()
            .unwrap_or_else(|| panic!("no dev key"));
        (dir, config, auth, key)
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("orderflow-auth-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        dir
    }

    #[test]
    fn bearer_headers_are_parsed() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }

    #[tokio::test]
    async fn dev_tokens_validate_and_carry_scopes() {
        let (dir, config, auth, key) = dev_issuer();
        let claims = Claims::new(
            &config,
            "c-1",
            &["orders:read", "orders:write"],
            Duration::from_secs(60),
        );
        let token = key.sign(&claims).unwrap_or_else(|e| panic!("{e}"));
        let p = auth
            .authenticate(Some(&format!("Bearer {token}")))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.subject, "c-1");
        assert!(p.has("orders:write") && !p.is_admin());
        // The same file gives the same key (and kid) to a second process.
        let again = SigningKey::load_or_create(Path::new(&config.dev_key_file))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.kid(), key.kid());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn verified_tokens_are_remembered_only_while_valid_and_their_keys_current() {
        let (dir, config, auth, key) = dev_issuer();
        let claims = Claims::new(&config, "c-2", &["orders:read"], Duration::from_secs(60));
        let token = key.sign(&claims).unwrap_or_else(|e| panic!("{e}"));
        let header = format!("Bearer {token}");
        let first = auth
            .authenticate(Some(&header))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let keys = auth.current();
        let now = unix_now();
        assert_eq!(auth.verified.get(&token, &keys, now), Some(first.clone()));
        let again = auth
            .authenticate(Some(&header))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, first);
        // Past its expiry (and the leeway) the remembered token is forgotten, not accepted.
        let after = claims.exp + config.leeway_secs + 1;
        assert_eq!(auth.verified.get(&token, &keys, after), None);
        assert_eq!(auth.verified.get(&token, &keys, now), None);
        // Verified again, then the keys are fetched again: what the old set verified is
        // forgotten.
        auth.authenticate(Some(&header))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let refetched = Arc::new(KeySet::from_jwks(&JwkSet {
            keys: vec![key.jwk().clone()],
        }));
        assert_eq!(auth.verified.get(&token, &refetched, now), None);
        // A refused token is not remembered.
        let expired = Claims {
            exp: now - 600,
            ..claims
        };
        let expired = key.sign(&expired).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            auth.authenticate(Some(&format!("Bearer {expired}"))).await,
            Err(AuthError::Invalid("expired"))
        );
        assert!(auth.verified.lock().get(&expired).is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn bad_tokens_are_refused_with_a_reason() {
        let (dir, config, auth, key) = dev_issuer();
        let check = |claims: Claims| {
            let token = key.sign(&claims).unwrap_or_else(|e| panic!("{e}"));
            let auth = &auth;
            async move { auth.authenticate(Some(&format!("Bearer {token}"))).await }
        };
        let base = Claims::new(&config, "c-1", &[], Duration::from_secs(60));
        let now = unix_now();
        let expired = Claims {
            exp: now - 600,
            ..base.clone()
        };
        assert_eq!(check(expired).await, Err(AuthError::Invalid("expired")));
        let early = Claims {
            nbf: Some(now + 600),
            ..base.clone()
        };
        assert_eq!(check(early).await, Err(AuthError::Invalid("not yet valid")));
        let issuer = Claims {
            iss: "someone-else".into(),
            ..base.clone()
        };
        assert_eq!(check(issuer).await, Err(AuthError::Invalid("wrong issuer")));
        let audience = Claims {
            aud: "another-api".into(),
            ..base.clone()
        };
        assert_eq!(
            check(audience).await,
            Err(AuthError::Invalid("wrong audience"))
        );
        // Another key with the same kid: the signature does not verify.
        let (other, _) = SigningKey::generate_es256().unwrap_or_else(|e| panic!("{e}"));
        let forged = SigningKey {
            kid: key.kid().to_owned(),
            ..other
        };
        let token = forged.sign(&base).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            auth.authenticate(Some(&format!("Bearer {token}"))).await,
            Err(AuthError::Invalid("bad signature"))
        );
        // alg none: no signature at all.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&base).unwrap_or_default())
        );
        assert!(matches!(
            auth.authenticate(Some(&format!("Bearer {none}"))).await,
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(auth.authenticate(None).await, Err(AuthError::Missing));
        let _ = std::fs::remove_dir_all(dir);
    }
}
