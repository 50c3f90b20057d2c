"""The identity provider as a real relying party sees it, with Python's authlib and requests.

Starts the real binary (`target/debug/nimbus`, or `$NIMBUS_BIN`) on a temporary app with
`nimbus up DIR --port 0`, then runs the OpenID Connect code flow the way a web application would:
discovery, authorization code + PKCE (S256) through the hosted sign-up and sign-in pages (a
`requests.Session` plays the browser and keeps the CSRF and session cookies), the code exchange
with authlib, ID token verification with authlib's jose against the JWKS, userinfo, refresh token
rotation with reuse detection, and RP-initiated logout.

Run by `scripts/test.sh` in the virtualenv `target/test-venv` (`pip install authlib requests`);
by hand: `target/test-venv/bin/python tests/identity/rp_flow.py -v`.

A known product bug would be reported with a `BUG:` line and skipped (see `known_bug`); any
other failure fails the run.
"""

import html.parser
import os
import secrets
import sys
import time
import unittest
import urllib.parse
import warnings

import requests
from authlib.deprecate import AuthlibDeprecationWarning

# authlib.jose works and is what relying parties use today; its move to joserfc is not our concern.
warnings.filterwarnings("ignore", category=AuthlibDeprecationWarning)

from authlib.integrations.requests_client import OAuth2Session, OAuthError  # noqa: E402
from authlib.jose import JsonWebKey, JsonWebToken  # noqa: E402
from authlib.oidc.core import CodeIDToken  # noqa: E402
from authlib.oidc.discovery import OpenIDProviderMetadata  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nimbus_node import Node  # noqa: E402
REDIRECT_URI = "http://localhost:9/cb"  # registered, never served: redirects to it are caught
PASSWORD = "correct horse battery"
TIMEOUT = 10

MANIFEST = f"""
[identity]
audience = "api://rp-test"
display_name = "RP test"

[[identity.clients]]
id = "rp-web"
secret = "rp-web-secret"
redirect_uris = ["{REDIRECT_URI}"]

[[identity.clients]]
id = "rp-spa"
public = true
redirect_uris = ["{REDIRECT_URI}"]
"""


def known_bug(test, description):
    """Reports a product bug that a test shows, without failing the run: a `BUG:` line, then a skip."""
    print(f"\nBUG: {test.id()}: {description}", file=sys.stderr)
    test.skipTest(f"BUG: {description}")


class Forms(html.parser.HTMLParser):
    """The forms of a hosted page (action, method, inputs) and its links."""

    def __init__(self, text):
        super().__init__()
        self.forms = []
        self.links = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append({"action": attrs.get("action"), "method": attrs.get("method", "get"), "inputs": {}})
        elif tag == "input" and self.forms and attrs.get("name"):
            self.forms[-1]["inputs"][attrs["name"]] = attrs.get("value") or ""
        elif tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


class Browser:
    """A user agent: keeps cookies, follows redirects on the provider, stops at the client's."""

    def __init__(self, node):
        self.node = node
        self.http = requests.Session()

    def get(self, url, **kw):
        return self.http.get(urllib.parse.urljoin(self.node.url, url), allow_redirects=False, timeout=TIMEOUT, **kw)

    def follow(self, response):
        """Follows redirects while they stay on the provider; answers the last response."""
        for _ in range(10):
            if response.status_code not in (301, 302, 303, 307, 308):
                return response
            target = urllib.parse.urljoin(response.url, response.headers["Location"])
            if not target.startswith(self.node.url):
                return response
            response = self.get(target)
        raise AssertionError("too many redirects")

    def submit(self, page, action, fields):
        """Fills the form of `page` that posts to `action` (its hidden fields kept) and posts it."""
        forms = [f for f in Forms(page.text).forms if f["action"] == action]
        assert forms, f"no form posting to {action} on {page.url}:\n{page.text}"
        form = forms[0]
        assert form["method"].lower() == "post", form
        assert form["inputs"].get("csrf"), f"the form has no CSRF token: {form}"
        assert "request" in form["inputs"] or action != "/account/signin", form
        data = dict(form["inputs"])
        data.update(fields)
        url = urllib.parse.urljoin(self.node.url, action)
        return self.http.post(url, data=data, allow_redirects=False, timeout=TIMEOUT)


def query(location):
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


class RelyingPartyFlow(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Node(MANIFEST)
        response = requests.get(cls.node.url + "/.well-known/openid-configuration", timeout=TIMEOUT)
        response.raise_for_status()
        cls.metadata = OpenIDProviderMetadata(response.json())
        cls.jwks = JsonWebKey.import_key_set(requests.get(cls.metadata["jwks_uri"], timeout=TIMEOUT).json())

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    # ----- helpers -------------------------------------------------------------------------

    def client(self, public=False, **kw):
        """An authlib OAuth 2 client configured from the discovery document."""
        metadata = {k: v for k, v in self.metadata.items() if k.endswith("_endpoint") or k == "jwks_uri"}
        if public:
            return OAuth2Session(
                client_id="rp-spa",
                token_endpoint_auth_method="none",
                scope="openid profile email offline_access",
                redirect_uri=REDIRECT_URI,
                code_challenge_method="S256",
                **metadata,
                **kw,
            )
        return OAuth2Session(
            client_id="rp-web",
            client_secret="rp-web-secret",
            scope="openid profile email offline_access",
            redirect_uri=REDIRECT_URI,
            code_challenge_method="S256",
            **metadata,
            **kw,
        )

    def authorize(self, client, browser, **extra):
        """Starts the code flow; answers (first response, state, nonce, verifier)."""
        verifier = secrets.token_urlsafe(48)
        nonce = secrets.token_urlsafe(16)
        uri, state = client.create_authorization_url(
            self.metadata["authorization_endpoint"], code_verifier=verifier, nonce=nonce, **extra
        )
        query_sent = query(uri)
        self.assertEqual(query_sent.get("code_challenge_method"), "S256")
        self.assertEqual(len(query_sent.get("code_challenge", "")), 43)
        return browser.get(uri), state, nonce, verifier

    def sign_up(self, client, browser, email, name):
        """Authorize → sign-in page → "Create an account" → sign-up form: the client's redirect."""
        response, state, nonce, verifier = self.authorize(client, browser)
        page = browser.follow(response)
        self.assertEqual(page.status_code, 200, page.text)
        self.assertIn("/account/signin", page.url)
        signup_links = [a for a in Forms(page.text).links if a.startswith("/account/signup")]
        self.assertTrue(signup_links, "the sign-in page links to the sign-up page")
        page = browser.get(signup_links[0])
        self.assertEqual(page.status_code, 200, page.text)
        back = browser.submit(page, "/account/signup", {"email": email, "password": PASSWORD, "name": name})
        return self.caught(back, state), state, nonce, verifier

    def sign_in(self, client, browser, email, password=PASSWORD):
        response, state, nonce, verifier = self.authorize(client, browser)
        page = browser.follow(response)
        self.assertEqual(page.status_code, 200, page.text)
        self.assertIn("/account/signin", page.url)
        back = browser.submit(page, "/account/signin", {"email": email, "password": password})
        return self.caught(back, state), state, nonce, verifier

    def caught(self, response, state):
        """The redirect to the client's redirect URI, not followed (nothing serves it)."""
        self.assertIn(response.status_code, (302, 303), f"expected a redirect to the client:\n{response.text}")
        location = response.headers["Location"]
        self.assertTrue(location.startswith(REDIRECT_URI + "?"), location)
        params = query(location)
        self.assertNotIn("error", params, location)
        self.assertEqual(params.get("state"), state)
        self.assertEqual(params.get("iss"), self.metadata["issuer"], "RFC 9207 iss parameter")
        return location

    def verify_id_token(self, id_token, client_id, nonce):
        """Verifies an ID token as an RP must: RS256 signature by a JWKS key, iss, aud, exp, and
        the nonce of the authorization request (`None` for one from a refresh, which has none)."""
        jwt = JsonWebToken(self.metadata["id_token_signing_alg_values_supported"])
        options = {
            "iss": {"essential": True, "value": self.metadata["issuer"]},
            "aud": {"essential": True, "value": client_id},
            "exp": {"essential": True},
        }
        if nonce is not None:
            options["nonce"] = {"essential": True, "value": nonce}
        claims = jwt.decode(
            id_token,
            self.jwks,
            claims_cls=CodeIDToken,
            claims_options=options,
            claims_params={"nonce": nonce, "client_id": client_id},
        )
        claims.validate(leeway=5)
        self.assertEqual(claims.header["alg"], "RS256")
        self.assertIn(claims.header.get("kid"), [k.kid for k in self.jwks.keys])
        self.assertGreater(claims["exp"], time.time())
        self.assertEqual(claims["aud"], client_id)
        if nonce is not None:
            self.assertEqual(claims["nonce"], nonce)
        return claims

    def refused(self, call):
        """The OAuth error an authlib call raised."""
        with self.assertRaises(OAuthError) as raised:
            call()
        return raised.exception.error

    # ----- tests ---------------------------------------------------------------------------

    def test_discovery_is_valid_openid_provider_metadata(self):
        self.metadata.validate()  # authlib's checks: required fields, URLs, S256, response types
        self.assertEqual(self.metadata["issuer"], self.node.url)
        self.assertIn("S256", self.metadata["code_challenge_methods_supported"])
        self.assertNotIn("plain", self.metadata["code_challenge_methods_supported"])
        self.assertTrue(self.metadata["end_session_endpoint"].startswith(self.node.url))
        self.assertTrue(self.jwks.keys, "the JWKS has a key")
        raw = requests.get(self.metadata["jwks_uri"], timeout=TIMEOUT).json()
        for key in raw["keys"]:
            self.assertEqual((key["kty"], key.get("alg"), key.get("use")), ("RSA", "RS256", "sig"), key)
            self.assertFalse({"d", "p", "q", "dp", "dq", "qi"} & key.keys(), "only public parts are published")

    def test_code_flow_with_pkce_refresh_userinfo_and_logout(self):
        email = f"ada-{secrets.token_hex(4)}@example.com"

        # First run: a new user signs up on the hosted page and comes back with a code.
        client = self.client()
        browser = Browser(self.node)
        location, _, nonce, verifier = self.sign_up(client, browser, email, "Ada Lovelace")
        token = client.fetch_token(authorization_response=location, code_verifier=verifier)
        self.assertEqual(token["token_type"], "Bearer")
        claims = self.verify_id_token(token["id_token"], "rp-web", nonce)
        self.assertEqual((claims["email"], claims.get("name")), (email, "Ada Lovelace"))
        subject = claims["sub"]

        # Second run, a fresh browser: the same user signs in.
        client = self.client()
        browser = Browser(self.node)
        location, _, nonce, verifier = self.sign_in(client, browser, email)
        token = client.fetch_token(authorization_response=location, code_verifier=verifier)
        claims = self.verify_id_token(token["id_token"], "rp-web", nonce)
        self.assertEqual(claims["sub"], subject, "the same user")
        self.assertIsNotNone(claims.get("auth_time"))
        self.assertTrue(token["refresh_token"], "offline_access was asked for")
        self.assertEqual(set(token["scope"].split()), {"openid", "profile", "email", "offline_access"})

        # Userinfo with the access token (authlib puts it in the Authorization header).
        info = client.get(self.metadata["userinfo_endpoint"], timeout=TIMEOUT)
        self.assertEqual(info.status_code, 200, info.text)
        self.assertEqual(info.json()["sub"], subject)
        self.assertEqual(info.json()["email"], email)
        self.assertEqual(info.json()["name"], "Ada Lovelace")
        self.assertEqual(info.headers.get("Cache-Control"), "no-store")
        bad = requests.get(
            self.metadata["userinfo_endpoint"], headers={"Authorization": "Bearer not-a-token"}, timeout=TIMEOUT
        )
        self.assertEqual(bad.status_code, 401)
        self.assertIn("invalid_token", bad.headers.get("WWW-Authenticate", ""))

        # Refresh: a new pair, the refresh token rotated.
        first = token["refresh_token"]
        refreshed = client.refresh_token(refresh_token=first)
        second = refreshed["refresh_token"]
        self.assertNotEqual(second, first, "the refresh token rotates")
        self.assertNotEqual(refreshed["access_token"], token["access_token"])
        claims = self.verify_id_token(refreshed["id_token"], "rp-web", None)
        self.assertEqual(claims["sub"], subject)
        self.assertEqual(client.get(self.metadata["userinfo_endpoint"], timeout=TIMEOUT).json()["sub"], subject)

        # The rotated token comes back (a thief's copy): refused, and its whole family revoked.
        self.assertEqual(self.refused(lambda: self.client().refresh_token(refresh_token=first)), "invalid_grant")
        self.assertEqual(self.refused(lambda: self.client().refresh_token(refresh_token=second)), "invalid_grant")

        # SSO: the browser's session answers prompt=none with a code.
        response, state, _, _ = self.authorize(self.client(), browser, prompt="none")
        self.caught(response, state)

        # RP-initiated logout back to a registered URI with our state.
        logout_state = secrets.token_urlsafe(8)
        session_cookie = browser.http.cookies.get("nimbus_sid")
        self.assertTrue(session_cookie)
        response = browser.get(
            self.metadata["end_session_endpoint"],
            params={
                "id_token_hint": token["id_token"],
                "post_logout_redirect_uri": REDIRECT_URI,
                "state": logout_state,
            },
        )
        self.assertIn(response.status_code, (302, 303), response.text)
        location = response.headers["Location"]
        self.assertTrue(location.startswith(REDIRECT_URI + "?"), location)
        self.assertEqual(query(location).get("state"), logout_state)
        self.assertIsNone(browser.http.cookies.get("nimbus_sid"), "the session cookie is cleared")

        # Signed out: prompt=none answers login_required, even with the old cookie put back.
        for replay in (False, True):
            if replay:
                browser.http.cookies.set("nimbus_sid", session_cookie)
            response, state, _, _ = self.authorize(self.client(), browser, prompt="none")
            self.assertIn(response.status_code, (302, 303), response.text)
            params = query(response.headers["Location"])
            self.assertTrue(response.headers["Location"].startswith(REDIRECT_URI + "?"))
            self.assertEqual(params.get("error"), "login_required", params)
            self.assertEqual(params.get("state"), state)

        # A logout naming an unregistered URI ends the session but does not redirect there.
        response = browser.get(
            self.metadata["end_session_endpoint"],
            params={"client_id": "rp-web", "post_logout_redirect_uri": "https://evil.example/", "state": "x"},
        )
        self.assertEqual(response.status_code, 200)
        self.assertNotIn("Location", response.headers)

    def test_public_client_with_pkce(self):
        email = f"spa-{secrets.token_hex(4)}@example.com"
        client = self.client(public=True)
        location, _, nonce, verifier = self.sign_up(client, Browser(self.node), email, "")

        # A wrong verifier is refused; the code stays usable by its rightful owner.
        wrong = self.client(public=True)
        error = self.refused(
            lambda: wrong.fetch_token(authorization_response=location, code_verifier=secrets.token_urlsafe(48))
        )
        self.assertEqual(error, "invalid_grant")

        token = client.fetch_token(authorization_response=location, code_verifier=verifier)
        claims = self.verify_id_token(token["id_token"], "rp-spa", nonce)
        self.assertEqual(claims["email"], email)
        self.assertNotIn("name", claims, "no name was given")
        # An ID token for one client does not verify for another.
        with self.assertRaisesRegex(Exception, "aud"):
            self.verify_id_token(token["id_token"], "rp-web", nonce)

        # The code was used: a second exchange is refused, and the tokens it gave are revoked.
        again = self.client(public=True)
        error = self.refused(lambda: again.fetch_token(authorization_response=location, code_verifier=verifier))
        self.assertEqual(error, "invalid_grant")
        error = self.refused(lambda: self.client(public=True).refresh_token(refresh_token=token["refresh_token"]))
        self.assertEqual(error, "invalid_grant")


if __name__ == "__main__":
    unittest.main()
