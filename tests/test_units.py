"""The one rate parser: every spelling it accepts, and the ones it refuses."""
import pytest

from layerasync.units import format_rate, parse_rate


@pytest.mark.parametrize('text, bytes_per_second', [
    # bits per second: tc's bit units (any case), and b/s with a lowercase b
    ('1gbit', 125e6), ('1Gbit', 125e6), ('1GBIT', 125e6), ('100mbit', 12.5e6),
    ('64kbit', 8e3), ('2tbit', 250e9), ('8000bit', 1e3), ('10Gbit/s', 1.25e9),
    ('10Gb/s', 1.25e9), ('10gb/s', 1.25e9), ('1kibit', 128), ('1Mibit', 2 ** 20 / 8),
    # bytes per second: Bps and B/s with a capital B, and byte in any case
    ('125MBps', 125e6), ('125mBps', 125e6), ('1.25GB/s', 1.25e9), ('125mbyte', 125e6),
    ('125MByte/s', 125e6), ('100MiB/s', 100 * 2 ** 20), ('1KiBps', 1024), ('1Bps', 1),
    # numbers: decimals, exponents, blanks around
    ('.5gbit', 62.5e6), ('2.5e3mbit', 312.5e6), (' 3 Gbit ', 375e6),
])
def test_spellings(text, bytes_per_second):
    assert parse_rate(text) == pytest.approx(bytes_per_second)


@pytest.mark.parametrize('text, tc_reading, common_reading, fix', [
    ('1gbps', '8 Gbit/s', '1 Gbit/s', '1gbit for bits or 1GBps (= 1GB/s) for bytes'),
    ('1Gbps', '8 Gbit/s', '1 Gbit/s', '1Gbit for bits or 1GBps'),
    ('100mbps', '800 Mbit/s', '100 Mbit/s', '100mbit for bits or 100MBps'),
    ('125kibps', '1.024 Mbit/s', '128 kbit/s', '125kibit for bits or 125KiBps'),
    ('10bps', '80 bit/s', '10 bit/s', '10bit for bits or 10Bps'),
    ('1GBPS', '8 Gbit/s', '1 Gbit/s', '1Gbit for bits or 1GBps'),
])
def test_bps_with_a_lowercase_b_is_refused_with_both_readings(text, tc_reading, common_reading,
                                                              fix):
    with pytest.raises(ValueError) as error:
        parse_rate(text, '--bandwidth')
    message = str(error.value)
    assert message.startswith(f"--bandwidth '{text}' is ambiguous: tc reads ")
    assert f'bytes per second ({tc_reading} = ' in message
    assert f'bits per second ({common_reading} = ' in message
    assert fix in message


@pytest.mark.parametrize('text', ['1000', '10G', '10Gb', '1.25GB', 'fast', '', 'gbit',
                                  '1.2.3gbit', '10 Gbit per second', '-1gbit', '1e9', '1xbit'])
def test_not_a_rate(text):
    with pytest.raises(ValueError, match=f"--update-rate '{text}': expected a number and a unit, "
                                         'e.g. 1gbit, 100mbit or 10Gb/s'):
        parse_rate(text, '--update-rate')


def test_a_rate_is_positive():
    with pytest.raises(ValueError, match="rate '0gbit': a rate must be positive"):
        parse_rate('0gbit')


@pytest.mark.parametrize('rate, text', [(125e6, '1 Gbit/s = 125 MB/s'),
                                        (1.25e9, '10 Gbit/s = 1.25 GB/s'),
                                        (100, '800 bit/s = 100 B/s'),
                                        (2 ** 20, '8.389 Mbit/s = 1.049 MB/s')])
def test_format_rate(rate, text):
    assert format_rate(rate) == text
    assert parse_rate(text.split(' = ')[0].replace(' ', '')) == pytest.approx(rate, rel=1e-3)
