"""Test certificates, made with the ``openssl`` command line tool.

:func:`make_certs` writes into a directory:

- ``ca.pem`` / ``ca.key``: the CA the TLS node trusts and is signed by;
- ``server.pem`` / ``server.key``: the node's certificate, CN ``localhost``,
  subjectAltName ``DNS:localhost, IP:127.0.0.1``;
- ``client.pem`` / ``client.key``: a client certificate, CN
  :data:`CLIENT_CN` (the broker user of EXTERNAL logins);
  ``client-encrypted.key``: the same key encrypted with
  :data:`KEY_PASSWORD`;
- ``nobody.pem`` / ``nobody.key``: a client certificate of the same CA for
  a CN that is no broker user;
- ``other-ca.pem`` / ``other-ca.key``: an unrelated CA, which signed
  nothing the node uses; ``stranger.pem`` / ``stranger.key``: a client
  certificate it signed (CN :data:`CLIENT_CN`).

Keys are EC (P-256): quick to make, and every TLS stack here takes them.
"""

import os
import subprocess

CLIENT_CN = 'threadko-client'
NOBODY_CN = 'threadko-nobody'
KEY_PASSWORD = 'tk-key-pass-3c7e1d0f'

_CA_EXTENSIONS = [
    'basicConstraints=critical,CA:TRUE',
    'keyUsage=critical,keyCertSign,cRLSign',
    'subjectKeyIdentifier=hash',
]


def _openssl(*args, cwd):
    subprocess.run(('openssl',) + args, cwd=cwd, check=True,
                   capture_output=True, timeout=60)


def _new_key(name, cwd):
    _openssl('genpkey', '-algorithm', 'EC', '-pkeyopt',
             'ec_paramgen_curve:P-256', '-out', name, cwd=cwd)


def _make_ca(stem, common_name, cwd):
    _new_key(stem + '.key', cwd)
    args = ['req', '-x509', '-new', '-key', stem + '.key', '-out',
            stem + '.pem', '-days', '3', '-subj', '/CN=' + common_name]
    for extension in _CA_EXTENSIONS:
        args += ['-addext', extension]
    _openssl(*args, cwd=cwd)


def _make_leaf(stem, common_name, ca_stem, extensions, cwd):
    _new_key(stem + '.key', cwd)
    _openssl('req', '-new', '-key', stem + '.key', '-out', stem + '.csr',
             '-subj', '/CN=' + common_name, cwd=cwd)
    extfile = os.path.join(cwd, stem + '.ext')
    with open(extfile, 'w') as file:
        file.write('\n'.join([
            'basicConstraints=critical,CA:FALSE',
            'keyUsage=critical,digitalSignature,keyEncipherment',
            'subjectKeyIdentifier=hash',
            'authorityKeyIdentifier=keyid',
        ] + extensions) + '\n')
    _openssl('x509', '-req', '-in', stem + '.csr', '-CA', ca_stem + '.pem',
             '-CAkey', ca_stem + '.key', '-CAcreateserial', '-out',
             stem + '.pem', '-days', '3', '-extfile', extfile, cwd=cwd)
    os.unlink(os.path.join(cwd, stem + '.csr'))
    os.unlink(extfile)


def make_certs(directory):
    """Write the certificates and keys listed above into ``directory``;
    return it."""
    directory = str(directory)
    os.makedirs(directory, exist_ok=True)
    _make_ca('ca', 'threadko test CA', directory)
    _make_leaf('server', 'localhost', 'ca', [
        'extendedKeyUsage=serverAuth',
        'subjectAltName=DNS:localhost,IP:127.0.0.1',
    ], directory)
    client_extensions = ['extendedKeyUsage=clientAuth']
    _make_leaf('client', CLIENT_CN, 'ca', client_extensions, directory)
    _make_leaf('nobody', NOBODY_CN, 'ca', client_extensions, directory)
    _openssl('pkey', '-in', 'client.key', '-aes256', '-passout',
             'pass:' + KEY_PASSWORD, '-out', 'client-encrypted.key',
             cwd=directory)
    _make_ca('other-ca', 'unrelated test CA', directory)
    _make_leaf('stranger', CLIENT_CN, 'other-ca', client_extensions,
               directory)
    return directory
