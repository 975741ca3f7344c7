//! ValidateJWTSVID through the real agent socket, strictly per the JWT-SVID
//! standard and RFC 7515/7519 (issue 11, finding 5). Every refused token here
//! is signed with the trust domain's real signing key, read from the server's
//! data dir, so it is refused for what it says and not for its signature.
//! Also the SPIRE advisories that apply: tokens without `exp` or `aud`,
//! `zip`/`jku`/`jwk`/`p2c` headers, a 1 MB token of dots.

use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_agent::client::{ClientError, WorkloadClient};
use lanyard_host::clock::now;
use lanyard_tests::{EntrySpec, TRUST_DOMAIN, World, pem_to_der};
use serde_json::Value;
use tonic::Code;

const AUDIENCE: &str = "strict";

/// Signs arbitrary header and claims with the server's own ES256 key.
struct RealKey {
    kid: String,
    key: EcdsaKeyPair,
}

impl RealKey {
    /// The key that signed `token`, from `<data_dir>/keys/<kid>.pem`.
    fn of(world: &World, token: &str) -> anyhow::Result<Self> {
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap_or_default())?,
        )?;
        assert_eq!(header["alg"], "ES256", "the default key type");
        let kid = header["kid"].as_str().unwrap_or_default().to_owned();
        let pem = std::fs::read_to_string(
            world
                .dir
                .path()
                .join("server/keys")
                .join(format!("{kid}.pem")),
        )?;
        let der = pem_to_der(&pem)?;
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.first().map(Vec::as_slice).unwrap_or_default(),
        )?;
        Ok(Self { kid, key })
    }

    fn sign(&self, header: &str, claims: &str) -> anyhow::Result<String> {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = self.key.sign(&SystemRandom::new(), signed.as_bytes())?;
        Ok(format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// The header the server writes, with `extra` members appended.
    fn header(&self, extra: &str) -> String {
        format!(
            r#"{{"alg":"ES256","kid":"{}","typ":"JWT"{extra}}}"#,
            self.kid
        )
    }
}

/// The agent's answer to `token`: its message when refused with
/// InvalidArgument, None when accepted; any other answer is an error.
async fn refusal(client: &mut WorkloadClient, token: &str) -> anyhow::Result<Option<String>> {
    match client
        .validate_jwt(AUDIENCE.to_owned(), token.to_owned())
        .await
    {
        Ok(_) => Ok(None),
        Err(ClientError::Rpc {
            code: Code::InvalidArgument,
            message,
            ..
        }) => Ok(Some(message)),
        Err(other) => anyhow::bail!("not an InvalidArgument refusal: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_signed_with_the_real_key_are_refused_for_each_finding() -> anyhow::Result<()> {
    let world = World::start("", &[EntrySpec::mine("/strict")]).await?;
    let mut client = WorkloadClient::new(&world.endpoint())?;
    let minted = client.fetch_jwt(vec![AUDIENCE.into()], None).await?;
    let real = RealKey::of(&world, &minted[0].token)?;
    let sub = format!("spiffe://{TRUST_DOMAIN}/strict");
    let (iat, exp) = (now() - 5, now() + 300);
    let claims = |extra: &str| {
        format!(r#"{{"sub":"{sub}","aud":"{AUDIENCE}","exp":{exp},"iat":{iat}{extra}}}"#)
    };

    // Controls: the minted token, and one made here with the same key, pass.
    assert_eq!(refusal(&mut client, &minted[0].token).await?, None);
    let control = real.sign(&real.header(""), &claims(""))?;
    assert_eq!(refusal(&mut client, &control).await?, None);

    let hour_ahead = now() + 3600;
    let cases: Vec<(&str, String, String, &str)> = vec![
        (
            "nbf an hour ahead",
            real.header(""),
            claims(&format!(r#","nbf":{hour_ahead}"#)),
            "not valid yet (nbf)",
        ),
        (
            "crit header",
            real.header(r#","crit":["exp"]"#),
            claims(""),
            "\"crit\" is not allowed",
        ),
        (
            "jku header",
            real.header(r#","jku":"https://evil.example/keys""#),
            claims(""),
            "header parameter \"jku\" is not allowed",
        ),
        (
            "jwk header",
            real.header(r#","jwk":{"kty":"EC"}"#),
            claims(""),
            "header parameter \"jwk\" is not allowed",
        ),
        (
            "zip header",
            real.header(r#","zip":"DEF""#),
            claims(""),
            "header parameter \"zip\" is not allowed",
        ),
        (
            "p2c header",
            real.header(r#","p2c":100000000"#),
            claims(""),
            "header parameter \"p2c\" is not allowed",
        ),
        (
            "x5u header",
            real.header(r#","x5u":"https://evil.example/c.pem""#),
            claims(""),
            "header parameter \"x5u\" is not allowed",
        ),
        (
            "sub in another trust domain",
            real.header(""),
            format!(r#"{{"sub":"spiffe://other.org/strict","aud":"{AUDIENCE}","exp":{exp}}}"#),
            "no bundle for trust domain other.org",
        ),
        (
            "sub not a SPIFFE ID",
            real.header(""),
            format!(r#"{{"sub":"strict","aud":"{AUDIENCE}","exp":{exp}}}"#),
            "sub \"strict\" is not a SPIFFE ID",
        ),
        (
            "two sub",
            real.header(""),
            format!(
                r#"{{"sub":"{sub}","sub":"spiffe://{TRUST_DOMAIN}/admin","aud":"{AUDIENCE}","exp":{exp}}}"#
            ),
            "claims has the member \"sub\" more than once",
        ),
        (
            "an expired exp, then a valid one",
            real.header(""),
            format!(
                r#"{{"sub":"{sub}","aud":"{AUDIENCE}","exp":{},"exp":{exp}}}"#,
                now() - 3600
            ),
            "claims has the member \"exp\" more than once",
        ),
        (
            "a wrong aud, then the right one",
            real.header(""),
            format!(r#"{{"sub":"{sub}","aud":"other","aud":"{AUDIENCE}","exp":{exp}}}"#),
            "claims has the member \"aud\" more than once",
        ),
        (
            "a duplicate in a nested object",
            real.header(""),
            claims(r#","x":{"y":1,"y":2}"#),
            "claims has the member \"y\" more than once",
        ),
        (
            "a duplicate header parameter",
            format!(
                r#"{{"alg":"ES256","kid":"other","kid":"{}","typ":"JWT"}}"#,
                real.kid
            ),
            claims(""),
            "header has the member \"kid\" more than once",
        ),
        (
            "no exp",
            real.header(""),
            format!(r#"{{"sub":"{sub}","aud":"{AUDIENCE}","iat":{iat}}}"#),
            "claim \"exp\" is missing",
        ),
        (
            "no aud",
            real.header(""),
            format!(r#"{{"sub":"{sub}","exp":{exp},"iat":{iat}}}"#),
            "claim \"aud\" is missing",
        ),
        (
            "exp as a string",
            real.header(""),
            format!(r#"{{"sub":"{sub}","aud":"{AUDIENCE}","exp":"{exp}"}}"#),
            "claim \"exp\" must be an integer",
        ),
        (
            "no kid",
            r#"{"alg":"ES256","typ":"JWT"}"#.to_owned(),
            claims(""),
            "header parameter \"kid\" is missing",
        ),
    ];
    for (what, header, token_claims, expected) in cases {
        let token = real.sign(&header, &token_claims)?;
        let message = refusal(&mut client, &token)
            .await?
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(
            message.contains("invalid JWT-SVID: ") && message.contains(expected),
            "{what}: {message}"
        );
    }

    world.stop().await;
    Ok(())
}

/// Refusals that need no signature: `none`/HS256, and hostile sizes, which
/// are refused before anything is decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_and_oversize_tokens_are_refused_quickly() -> anyhow::Result<()> {
    let world = World::start("", &[EntrySpec::mine("/strict")]).await?;
    let mut client = WorkloadClient::new(&world.endpoint())?;
    client.fetch_jwt(vec![AUDIENCE.into()], None).await?;
    let claims = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"sub":"spiffe://{TRUST_DOMAIN}/strict","aud":"{AUDIENCE}","exp":{}}}"#,
        now() + 300
    ));
    for alg in ["none", "HS256"] {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"k"}}"#));
        let message = refusal(&mut client, &format!("{header}.{claims}."))
            .await?
            .unwrap_or_default();
        assert!(
            message.contains(&format!("algorithm \"{alg}\" is not allowed")),
            "{message}"
        );
    }

    let dots = ".".repeat(1 << 20);
    for _ in 0..5 {
        let started = Instant::now();
        let message = refusal(&mut client, &dots).await?.unwrap_or_default();
        assert!(message.contains("longer than 20000 bytes"), "{message}");
        // 1 MB through the socket, refused unread: milliseconds; the bound
        // leaves room for a loaded CI machine.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    let message = refusal(&mut client, &"A".repeat(20_001))
        .await?
        .unwrap_or_default();
    assert!(message.contains("longer than 20000 bytes"), "{message}");

    world.stop().await;
    Ok(())
}
