// provisiond: passkeys (WebAuthn) on the portal's pages. No framework, no inline script.
//
// A page opts in with elements carrying data attributes:
//   <section data-passkey data-csrf="..." data-next="/...">  the token and where to go after
//                                         (data-enrol="1": adding the first factor to go on)
//   <form data-passkey-register>  (a "name" input)          registers a new passkey
//   <button data-passkey-signin>                             signs in with a passkey
//   <p data-passkey-status>                                  where progress and errors show
//   [data-passkey-js][hidden]                                shown once this script runs
// The server speaks WebAuthn's JSON forms; binary fields are base64url.
(function () {
  "use strict";

  function toBase64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var text = "";
    for (var i = 0; i < bytes.length; i++) {
      text += String.fromCharCode(bytes[i]);
    }
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function fromBase64url(value) {
    var text = atob(value.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((value.length + 3) % 4));
    var bytes = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) {
      bytes[i] = text.charCodeAt(i);
    }
    return bytes.buffer;
  }

  function descriptors(list) {
    return (list || []).map(function (item) {
      var out = { type: item.type, id: fromBase64url(item.id) };
      if (item.transports) {
        out.transports = item.transports;
      }
      return out;
    });
  }

  function creationOptions(options) {
    var out = Object.assign({}, options);
    out.challenge = fromBase64url(options.challenge);
    out.user = Object.assign({}, options.user, { id: fromBase64url(options.user.id) });
    out.excludeCredentials = descriptors(options.excludeCredentials);
    return out;
  }

  function requestOptions(options) {
    var out = Object.assign({}, options);
    out.challenge = fromBase64url(options.challenge);
    out.allowCredentials = descriptors(options.allowCredentials);
    return out;
  }

  function registrationJSON(credential) {
    var response = credential.response;
    return {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || undefined,
      clientExtensionResults: credential.getClientExtensionResults(),
      response: {
        clientDataJSON: toBase64url(response.clientDataJSON),
        attestationObject: toBase64url(response.attestationObject),
        transports: response.getTransports ? response.getTransports() : [],
      },
    };
  }

  function assertionJSON(credential) {
    var response = credential.response;
    return {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || undefined,
      clientExtensionResults: credential.getClientExtensionResults(),
      response: {
        clientDataJSON: toBase64url(response.clientDataJSON),
        authenticatorData: toBase64url(response.authenticatorData),
        signature: toBase64url(response.signature),
        userHandle: response.userHandle ? toBase64url(response.userHandle) : undefined,
      },
    };
  }

  function post(url, csrf, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    }).then(function (response) {
      return response.json().then(
        function (data) {
          if (!response.ok) {
            throw new Error(data.error || "The request was refused.");
          }
          return data;
        },
        function () {
          throw new Error("The server's answer could not be read. Reload the page and try again.");
        }
      );
    });
  }

  function failure(error) {
    // The browser's own errors for a closed or timed-out prompt.
    if (error && (error.name === "NotAllowedError" || error.name === "AbortError")) {
      return "The passkey prompt was closed or timed out. Try again.";
    }
    if (error && error.name === "InvalidStateError") {
      return "This passkey is already registered to your account.";
    }
    return (error && error.message) || "Something went wrong. Try again.";
  }

  function setup(section) {
    var csrf = section.getAttribute("data-csrf") || "";
    var next = section.getAttribute("data-next") || "";
    var status = section.querySelector("[data-passkey-status]");
    var say = function (text, isError) {
      if (status) {
        status.textContent = text;
        status.setAttribute("role", isError ? "alert" : "status");
        status.className = isError ? "error" : "";
      }
    };
    if (!window.PublicKeyCredential || !navigator.credentials) {
      say("This browser does not support passkeys. Use another method.", true);
      return;
    }
    section.querySelectorAll("[data-passkey-js]").forEach(function (element) {
      element.hidden = false;
    });

    var register = section.querySelector("form[data-passkey-register]");
    if (register) {
      register.addEventListener("submit", function (event) {
        event.preventDefault();
        var button = register.querySelector("button");
        var nameInput = register.querySelector("input[name=name]");
        var name = nameInput ? nameInput.value : "";
        button.disabled = true;
        say("Follow your browser's prompt to create the passkey.", false);
        post("/mfa/passkey/register/options", csrf, {})
          .then(function (started) {
            return navigator.credentials
              .create({ publicKey: creationOptions(started.options) })
              .then(function (credential) {
                return post("/mfa/passkey/register", csrf, {
                  handle: started.handle,
                  credential: registrationJSON(credential),
                  name: name,
                  next: next,
                  enrol: section.getAttribute("data-enrol") || "",
                });
              });
          })
          .then(function (done) {
            say("Passkey added.", false);
            window.location.assign(done.next);
          })
          .catch(function (error) {
            say(failure(error), true);
            button.disabled = false;
          });
      });
    }

    var signin = section.querySelector("[data-passkey-signin]");
    if (signin) {
      signin.addEventListener("click", function (event) {
        event.preventDefault();
        signin.disabled = true;
        say("Follow your browser's prompt to use your passkey.", false);
        post("/mfa/passkey/options", csrf, {})
          .then(function (started) {
            return navigator.credentials
              .get({ publicKey: requestOptions(started.options) })
              .then(function (credential) {
                return post("/mfa/passkey/verify", csrf, {
                  handle: started.handle,
                  credential: assertionJSON(credential),
                  next: next,
                });
              });
          })
          .then(function (done) {
            say("Verified.", false);
            window.location.assign(done.next);
          })
          .catch(function (error) {
            say(failure(error), true);
            signin.disabled = false;
          });
      });
    }
  }

  document.querySelectorAll("[data-passkey]").forEach(setup);
})();
