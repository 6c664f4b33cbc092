//! HS256 JSON Web Tokens (RFC 7519) for the push scenario's clients.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// `base64url({"alg":"HS256","typ":"JWT"})`.
const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Signs `header_b64.payload_b64` with HMAC-SHA256 and returns the complete token.
fn sign(secret: &[u8], header_b64: &str, claims_json: &str) -> String {
    let signing_input = format!("{header_b64}.{}", URL_SAFE_NO_PAD.encode(claims_json));
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    let signature = mac.finalize().into_bytes();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// The token client `index` presents: claims `sub = "loadtest-<index>"`,
/// `exp = expires_at_unix` and `channels = ["*"]`, signed HS256 with `secret`.
pub fn client_token(secret: &[u8], index: u64, expires_at_unix: u64) -> String {
    let claims =
        format!(r#"{{"sub":"loadtest-{index}","exp":{expires_at_unix},"channels":["*"]}}"#);
    sign(secret, HEADER, &claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_constant_matches_its_json() {
        assert_eq!(
            HEADER,
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#)
        );
    }

    #[test]
    fn rfc7515_appendix_a1_signature() {
        // RFC 7515 A.1: the JWS header and payload bytes are given exactly (with CRLFs),
        // signed with the base64url-encoded 64-byte key below.
        let key_b64 = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
        let key = decode_base64url(key_b64);
        let header_b64 = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9";
        let claims =
            "{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";
        let token = sign(&key, header_b64, claims);
        assert_eq!(
            token,
            "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\
             eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.\
             dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        );
    }

    #[test]
    fn client_tokens_carry_the_agreed_claims() {
        let token = client_token(b"secret", 42, 2_000_000_000);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims = String::from_utf8(decode_base64url(parts[1])).unwrap();
        assert_eq!(
            claims,
            r#"{"sub":"loadtest-42","exp":2000000000,"channels":["*"]}"#
        );
    }

    /// The tests read tokens back.
    fn decode_base64url(text: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(text).expect("base64url")
    }
}
